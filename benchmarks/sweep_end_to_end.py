"""Whole sweeps as a user runs them, with Hydra's basic launcher and with ``hydra/launcher=packed``.

Each run is ``python -m mnist_lab.train -m <grid> hydra/launcher=<launcher>`` in a fresh process
(start-up, configs, data, training, validation, test, checkpoints, TensorBoard events, records and
the sweep report: everything a user waits for), timed from outside; its last line says where the
time went (``mnist_lab/cli/sweep_clock.py``), and each row carries those parts. The default set is
the one the scaffolding issue (23) measures, in one run:

- ``one_seed``: the softmax regression's one-job sweep (``seed=0``);
- ``softmax_seeds``: the same with ``'seed=range(16)'`` (16 jobs), packed and basic;
- ``mlp_lr``: ``experiment=mlp_lr 'seed=range(5)' trainer.max_epochs=2`` (15 jobs), packed and basic.

The launchers take turns (basic, packed, basic, packed, ...), so a machine whose speed drifts
shows as a spread between repeats. The summary rows then give, per repeat: ``ratio`` = basic
time / packed time; ``over_one_seed`` = the 16-seed sweep's time / the one-seed sweep's; and
``scaffolding_per_extra_job_s`` = (the sweep's time less its training) less (the one-seed
sweep's time less its training), over the 15 extra jobs. Every job must finish with status ok
under both launchers, and each job's ``best_val_acc`` is compared between them (a packed job
records its solo run's numbers: the largest difference is printed).

    python -m benchmarks.sweep_end_to_end [--grid one_seed softmax_seeds mlp_lr] [--repeats 1]
                                          [--single] [--data-dir data] [--out /tmp/e2e]
    python -m benchmarks.sweep_end_to_end --compare <basic sweep dir> <packed sweep dir>

``--single`` also times the default single run (``python -m mnist_lab.train``, 10 MLP epochs)
against the bare imports (``python -c "import torch, lightning, hydra"``): what it spends beyond
its training and those imports. ``--compare`` reads two finished sweeps of the same grid and
prints, per job, the first step at which its per-step losses differ by more than 1e-6 and 1e-2
relative, and both best val accs.

``sweep.py`` times the training steps alone; this times what those steps are part of.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SOFTMAX = ["model=linear", "data.batch_size=64", "trainer=cpu", "trainer.max_epochs=1"]
GRIDS = {
    # softmax regression, batch 64, 1 epoch: one seed, and the 16-seed replication
    "one_seed": [*SOFTMAX, "seed=0"],
    "softmax_seeds": [*SOFTMAX, "seed=range(16)"],
    # experiment=mlp_lr's grid (3 lr) with 5 seeds, 2 of its 10 epochs
    "mlp_lr": ["experiment=mlp_lr", "seed=range(5)", "trainer.max_epochs=2"],
    # experiment=mlp_batch at batch 16 and at batch 64, 5 seeds, 1 of its 10 epochs
    "mlp_batch_16": ["experiment=mlp_batch", "data.batch_size=16", "seed=range(1,6)", "trainer.max_epochs=1"],
    "mlp_batch_64": ["experiment=mlp_batch", "data.batch_size=64", "seed=range(1,6)", "trainer.max_epochs=1"],
    # experiment=mlp_batch at batch 1: 48,000 steps per epoch, 5 seeds, 1 epoch
    "mlp_batch_1": ["experiment=mlp_batch", "data.batch_size=1", "seed=range(1,6)", "trainer.max_epochs=1"],
}
SEEDS = 16  # softmax_seeds' jobs
ALONE = {"one_seed"}  # one job: the same under either launcher, run with the default (packed) only
LAST_LINE = re.compile(r"sweep: (\d+) jobs, .* in ([\d.]+) s \((.*)\); report in")


def run_sweep(grid: list[str], launcher: str, sweep_dir: Path, data_dir: str, extra: list[str] = ()) -> dict:
    """The sweep's wall time (from outside) and the parts its last line names; SystemExit if it fails."""
    shutil.rmtree(sweep_dir, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "mnist_lab.train",
        "-m",
        *grid,
        f"hydra/launcher={launcher}",
        f"hydra.sweep.dir={sweep_dir}",
        f"data.data_dir={data_dir}",
        *extra,
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: the {launcher} sweep failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    line = LAST_LINE.search(done.stdout)
    parts = {name.strip(): float(s) for name, s in re.findall(r"([a-z -]+) ([\d.]+) s", line[3])} if line else {}
    return {"wall_s": round(seconds, 1), "parts": parts}


def run_single(data_dir: str, out: Path) -> dict:
    """The default single run's wall time and train_time_s, and the bare imports' wall time."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, lightning, hydra"], check=True)
    imports = time.perf_counter() - started
    run_dir = out / "single"
    shutil.rmtree(run_dir, ignore_errors=True)
    started = time.perf_counter()
    command = [sys.executable, "-m", "mnist_lab.train", f"hydra.run.dir={run_dir}", f"data.data_dir={data_dir}"]
    subprocess.run(command, check=True, capture_output=True)
    wall = time.perf_counter() - started
    train = json.loads((run_dir / "metrics.json").read_text())["train_time_s"]
    return {
        "single_run_s": round(wall, 1),
        "train_time_s": round(train, 1),
        "imports_s": round(imports, 1),
        "beyond_training_and_imports_s": round(wall - train - imports, 1),
    }


def records(sweep_dir: Path) -> dict[str, dict]:
    """Each job's metrics.json, by the job's overrides."""
    found = {}
    for path in sorted(sweep_dir.glob("*/metrics.json")):
        record = json.loads(path.read_text())
        found[" ".join(record.get("overrides", [])) or path.parent.name] = record
    return found


def first_step_apart(ours: list[float], theirs: list[float], relative: float) -> int | None:
    """The first step (1-based) whose losses differ by more than ``relative``, or None."""
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True), start=1):
        if abs(a - b) > relative * abs(b):
            return step
    return None


def agreement(basic_dir: Path, packed_dir: Path) -> dict[str, dict]:
    """Per job: the first step at which its packed and basic per-step losses (TensorBoard's
    ``train/loss``) differ by more than 1e-6 and 1e-2 relative, and its two best val accs."""
    from mnist_lab.analysis import summary as report  # imports torch and tensorboard: only here

    rows = {}
    for job in sorted(p.name for p in basic_dir.iterdir() if (p / "metrics.json").is_file()):
        _, basic = report.step_losses(basic_dir / job)
        _, packed = report.step_losses(packed_dir / job)
        rows[job] = {
            "steps": len(basic),
            "apart_1e-6": first_step_apart(packed, basic, 1e-6),
            "apart_1e-2": first_step_apart(packed, basic, 1e-2),
            "best_val_acc": [
                round(json.loads((d / job / "metrics.json").read_text())["best_val_acc"], 4)
                for d in (basic_dir, packed_dir)
            ],
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--compare",
        nargs=2,
        metavar=("BASIC_SWEEP", "PACKED_SWEEP"),
        help="only compare two finished sweeps job by job (per-step losses, best val acc), run nothing",
    )
    parser.add_argument("--grid", nargs="+", default=["one_seed", "softmax_seeds", "mlp_lr"], choices=list(GRIDS))
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--single", action="store_true", help="also time the default single run and the imports")
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"))
    parser.add_argument("--overrides", nargs="*", default=[], help="added to every sweep (e.g. data.val_size=500)")
    parser.add_argument("--out", default="/tmp/sweep_end_to_end", help="the sweeps' folders (replaced)")
    args = parser.parse_args()
    if args.compare:
        for job, row in agreement(Path(args.compare[0]), Path(args.compare[1])).items():
            print(json.dumps({"job": job, **row}))
        return
    data_dir = str(Path(args.data_dir).resolve())
    runs: dict[tuple[str, str], list[dict]] = {}
    for name in args.grid:
        found: dict[str, dict] = {}
        launchers = ("packed",) if name in ALONE else ("basic", "packed")
        for repeat in range(args.repeats):
            for launcher in launchers:
                sweep_dir = Path(args.out) / f"{name}-{launcher}-{repeat}"
                run = run_sweep(GRIDS[name], launcher, sweep_dir, data_dir, args.overrides)
                found[launcher] = records(sweep_dir)
                runs.setdefault((name, launcher), []).append(run)
                print(json.dumps({"grid": name, "launcher": launcher, "jobs": len(found[launcher]), **run}), flush=True)
        statuses = {r.get("status") for launcher in launchers for r in found[launcher].values()}
        if statuses != {"ok"}:
            sys.exit(f"error: not every job of {name} finished with status ok ({statuses}).")
        if len(launchers) == 2:
            basic, packed = found["basic"], found["packed"]
            if basic.keys() != packed.keys():
                sys.exit(f"error: the two sweeps of {name} did not run the same jobs.")
            difference = max(abs(basic[k]["best_val_acc"] - packed[k]["best_val_acc"]) for k in basic)
            basic_s = [r["wall_s"] for r in runs[(name, "basic")]]
            packed_s = [r["wall_s"] for r in runs[(name, "packed")]]
            row = {
                "grid": name,
                "jobs": len(basic),
                "basic_s": basic_s,
                "packed_s": packed_s,
                "ratio": [round(b / p, 2) for b, p in zip(basic_s, packed_s, strict=True)],
                "largest_best_val_acc_difference": difference,
            }
            print(json.dumps(row), flush=True)
    one = runs.get(("one_seed", "packed"))
    for launcher in ("packed", "basic"):
        many = runs.get(("softmax_seeds", launcher))
        if one and many:
            jobs = SEEDS

            def rest(run: dict) -> float:
                return run["wall_s"] - run["parts"].get("training", 0.0)

            print(
                json.dumps(
                    {
                        "softmax_seeds_vs_one_seed": launcher,
                        "over_one_seed": [round(m["wall_s"] / o["wall_s"], 2) for m, o in zip(many, one, strict=True)],
                        "scaffolding_per_extra_job_s": [
                            round((rest(m) - rest(o)) / (jobs - 1), 2) for m, o in zip(many, one, strict=True)
                        ],
                    }
                ),
                flush=True,
            )
    if args.single:
        print(json.dumps(run_single(data_dir, Path(args.out))), flush=True)


if __name__ == "__main__":
    main()
