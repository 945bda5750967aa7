"""A sweep's training steps, packed and one by one, in one process: same jobs, data and steps.

  one-by-one  each job alone: its net, loss, optimizer and step as a solo run builds them (Adam/
              AdamW fused on CPU; the CUDA-graph step on a GPU), its own batches, ``--steps``
              steps, one job after another (``mnist_lab.packed.size_probe.solo_steps``)
  packed      the same jobs in packs of ``--sizes`` (jobs that must match, e.g. by batch size,
              are split first): ``mnist_lab.packed.pack.Pack``, ``--steps`` packed steps per pack

Each time is the training steps only (no validation, checkpoints or Lightning), after
``--warmup`` steps; the ratio is one-by-one time / packed time (above 1: packing is faster).
``over_one_job_<size>`` is the packed time over one job's (one-by-one / jobs): the whole
grid's cost in single jobs (the GPU target: a 64-job grid, ``mlp_lr_wd_64``, in <= 3 jobs'
time). ``--repeats`` times the whole comparison again (one-by-one and packed interleaved) and prints
each repeat's ratios, so a machine whose speed drifts shows as a spread. ``--written-out`` also
times packs whose optimizer takes the path it takes off the CPU (``PackedOptimizer.grouped =
False``: the formulas written out with hyperparameters as tensors), for comparison. The size
``mnist_lab.packed.size_probe.probe_pack_size`` picks for the grid's first jobs is printed too.
``--bound`` also profiles the packs (``torch.profiler``, a separate run of the same steps) and
prints ``bound_<size>``: one-by-one time / the packs' per-parameter work alone (the matrix
products: matmuls and convolutions, forward and backward; and the optimizer's update kernels:
fused Adam/AdamW/SGD, the foreach ops; their self CPU time) - the ratio packing would reach if
everything else in a packed step took no time. That work is each job's own, which no pack
shares, so a ratio above the bound is out of reach on that machine.
A pack size is kept only where it is never more than 10 % slower than one-by-one
(``ratio >= 1 / 1.1``, ``mnist_lab.packed.size_probe.SLACK``): the printed rule picks the fastest such
size (``mnist_lab.packed.size_probe`` makes the same choice from a short probe).

    python -m benchmarks.sweep [--grid softmax_seeds mlp_lr cnn_small_lr mlp_batch] [--steps 200]
                               [--sizes 2,4,8,16] [--device cpu|cuda] [--data-dir data]
                               [--repeats 1] [--threads N] [--written-out] [--bound]
"""

from __future__ import annotations

import argparse
import json
import os
import re

import torch
from hydra import compose, initialize_config_dir

from mnist_lab import CONF_DIR
from mnist_lab.packed.groups import even_chunks
from mnist_lab.packed.pack import Pack
from mnist_lab.packed.size_probe import SLACK, probe_pack_size, solo_steps, timed

# torch.profiler's names of a step's per-parameter work: the matrix products of linear layers
# (mm, addmm, bmm, baddbmm: forward and both gradients) and convolutions (forward and backward,
# any backend), and the optimizer's update kernels (fused Adam/AdamW/SGD, torch's foreach ops)
PER_PARAMETER_WORK = re.compile(r"aten::(mm|addmm|bmm|baddbmm|\w*convolution\w*|_fused_\w+|_foreach_\w+)")

SEEDS = [f"seed={s}" for s in range(1, 6)]
GRIDS = {
    # softmax regression, 16-seed replication, batch 64
    "softmax_seeds": (["model=linear", "data.batch_size=64"], [[f"seed={s}"] for s in range(1, 17)]),
    # experiment=mlp_lr's grid with 5 seeds
    "mlp_lr": (
        ["experiment=mlp_lr"],
        [[lr, s] for lr in ("optimizer.lr=0.001", "optimizer.lr=0.01", "optimizer.lr=0.1") for s in SEEDS],
    ),
    # experiment=cnn_small_lr's grid with 5 seeds
    "cnn_small_lr": (
        ["experiment=cnn_small_lr"],
        [[lr, s] for lr in ("optimizer.lr=0.01", "optimizer.lr=0.001") for s in SEEDS],
    ),
    # experiment=mlp_batch's grid with 5 seeds (batch sizes pack separately)
    "mlp_batch": (["experiment=mlp_batch"], [[f"data.batch_size={b}", s] for b in (1, 16, 64, 256) for s in SEEDS]),
}
# the GPU target's grid: 8 lr x 8 weight decay, experiment=mlp_lr's net and batch (AdamW)
GRIDS["mlp_lr_wd_64"] = (
    ["experiment=mlp_lr", "optimizer=adamw"],
    [
        [f"optimizer.lr={lr}", f"optimizer.weight_decay={wd}"]
        for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3)
        for wd in (0.0, 1e-5, 1e-4, 1e-3, 1e-2, 3e-2, 0.1, 0.3)
    ],
)
# each batch size of the mlp_batch study alone (its ratio per batch size)
GRIDS.update(
    {
        f"mlp_batch_{b}": (["experiment=mlp_batch", f"data.batch_size={b}"], [[s] for s in SEEDS])
        for b in (1, 16, 64, 256)
    }
)
# 16 seeds of one setting: how large a pack pays on this machine (packed.size_probe.cpu_pack_size)
GRIDS.update(
    {
        f"mlp_batch_{b}_16_seeds": (
            ["experiment=mlp_batch", f"data.batch_size={b}"],
            [[f"seed={s}"] for s in range(16)],
        )
        for b in (1, 16, 64, 256)
    }
)
GRIDS["cnn_small_16_seeds"] = (["experiment=cnn_small_lr", "optimizer.lr=0.01"], [[f"seed={s}"] for s in range(16)])
GRIDS["cnn_4_seeds"] = (["model=cnn"], [[f"seed={s}"] for s in range(4)])  # the largest shipped net
GRIDS["cnn_small_b16_16_seeds"] = (["model=cnn_small", "data.batch_size=16"], [[f"seed={s}"] for s in range(16)])
GRIDS["mlp4_wide_16_seeds"] = (["experiment=mlp4_wide"], [[f"seed={s}"] for s in range(16)])


def configs(shared: list[str], jobs: list[list[str]], data_dir: str, device: str):
    accelerator = "gpu" if device == "cuda" else "cpu"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return [
            compose(
                "train", overrides=[*shared, *job, f"data.data_dir={data_dir}", f"trainer.accelerator={accelerator}"]
            )
            for job in jobs
        ]


def split(cfgs, size: int) -> list[list]:
    """Packs of at most ``size`` jobs, as equal in size as the launcher makes them
    (``packed.groups.even_chunks``), jobs that must match (batch size here) together."""
    by_batch: dict[int, list] = {}
    for cfg in cfgs:
        by_batch.setdefault(cfg.data.batch_size, []).append(cfg)
    return [chunk for group in by_batch.values() for chunk in even_chunks(group, size)]


def packed_steps(cfgs, device: torch.device, grouped: bool | None = None):
    """``pack_size.packed_steps``, optionally with the optimizer's other path."""
    pack = Pack(cfgs, device)
    if grouped is not None:
        pack.optimizer.grouped = grouped
    pack.net.train()
    while True:
        for x, y in pack.batches:
            yield pack.step(x, y)


def per_parameter_seconds(steps, count: int, warmup: int) -> float:
    """Self CPU seconds of the per-parameter work in ``count`` steps after ``warmup``, profiled."""
    for _ in range(warmup):
        next(steps)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        for _ in range(count):
            next(steps)
    micros = sum(e.self_cpu_time_total for e in profile.key_averages() if PER_PARAMETER_WORK.fullmatch(e.key))
    return micros / 1e6


def compare(cfgs, sizes: list[int], args, device: torch.device) -> dict:
    """One repeat: the grid one by one, then in packs of each size (and the other path)."""
    one_by_one = sum(timed(solo_steps(cfg, device), args.steps, args.warmup, device) for cfg in cfgs)
    row = {"one_by_one_s": round(one_by_one, 3)}
    for size in sizes:
        for label, grouped in [("", None), ("written_out_", False)][: 2 if args.written_out else 1]:
            packed = sum(
                timed(packed_steps(pack, device, grouped), args.steps, args.warmup, device)
                for pack in split(cfgs, size)
            )
            row[f"{label}packs_of_{size}_s"] = round(packed, 3)
            row[f"{label}ratio_{size}"] = round(one_by_one / packed, 2)
            row[f"{label}over_one_job_{size}"] = round(packed / (one_by_one / len(cfgs)), 2)
        if args.bound:
            work = sum(
                per_parameter_seconds(packed_steps(pack, device), args.steps, args.warmup) for pack in split(cfgs, size)
            )
            row[f"bound_{size}"] = round(one_by_one / work, 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", nargs="+", default=list(GRIDS), choices=list(GRIDS))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--sizes", default="2,4,8,16")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"))
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--written-out", action="store_true", help="also time the optimizer's off-CPU path")
    parser.add_argument("--bound", action="store_true", help="also profile the packs' per-parameter work (CPU)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.set_float32_matmul_precision("high")
    results = []
    for grid in args.grid:
        cfgs = configs(*GRIDS[grid], args.data_dir, args.device)
        sizes = [int(s) for s in args.sizes.split(",")]
        row = {"grid": grid, "jobs": len(cfgs), "steps": args.steps, "threads": torch.get_num_threads()}
        repeats = [compare(cfgs, sizes, args, device) for _ in range(args.repeats)]
        for key in repeats[0]:
            row[key] = [r[key] for r in repeats] if args.repeats > 1 else repeats[0][key]
        worst = {size: min(r[f"ratio_{size}"] for r in repeats) for size in sizes}
        fine = {size: ratio for size, ratio in worst.items() if ratio >= 1 / SLACK}
        row["rule_pack_size"] = max(fine, key=fine.get) if fine else 1
        row["probe_pack_size"] = probe_pack_size(split(cfgs, len(cfgs))[0], device)
        results.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "torch": torch.__version__, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
