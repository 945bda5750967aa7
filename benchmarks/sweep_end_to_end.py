"""A whole sweep as a user runs it, with Hydra's basic launcher and with ``hydra/launcher=packed``.

Each run is ``python -m mnist_lab.train -m <grid> hydra/launcher=<launcher>`` in a fresh
process (start-up, data, training, validation, test, checkpoints, TensorBoard events, records
and the sweep report: everything a user waits for), timed from outside. The launchers take
turns (basic, packed, basic, packed, ...) so that a machine whose speed drifts shows as a spread
between repeats; ratio = basic time / packed time of the same repeat (above 1: packing is
faster). Every job must finish with status ok under both launchers, and each job's
``best_val_acc`` is compared between them (a packed job records its solo run's numbers: the
largest difference is printed).

    python -m benchmarks.sweep_end_to_end [--grid softmax_seeds mlp_lr mlp_batch_16]
                                          [--repeats 2] [--data-dir data] [--out /tmp/e2e]
    python -m benchmarks.sweep_end_to_end --compare <basic sweep dir> <packed sweep dir>

``--compare`` reads two finished sweeps of the same grid and prints, per job, the first step at
which its per-step losses differ by more than 1e-6 and 1e-2 relative, and both best val accs.

``sweep.py`` times the training steps alone; this times what those steps are part of.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

GRIDS = {
    # softmax regression, 16-seed replication, batch 64, 3 epochs
    "softmax_seeds": ["model=linear", "data.batch_size=64", "trainer.max_epochs=3", "seed=range(1,17)"],
    # experiment=mlp_lr's grid with 5 seeds, 2 of its 10 epochs
    "mlp_lr": ["experiment=mlp_lr", "seed=range(1,6)", "trainer.max_epochs=2"],
    # experiment=mlp_batch at batch 16 and at batch 64, 5 seeds, 1 of its 10 epochs
    "mlp_batch_16": ["experiment=mlp_batch", "data.batch_size=16", "seed=range(1,6)", "trainer.max_epochs=1"],
    "mlp_batch_64": ["experiment=mlp_batch", "data.batch_size=64", "seed=range(1,6)", "trainer.max_epochs=1"],
    # experiment=mlp_batch at batch 1: 48,000 steps per epoch, 5 seeds, 1 epoch
    "mlp_batch_1": ["experiment=mlp_batch", "data.batch_size=1", "seed=range(1,6)", "trainer.max_epochs=1"],
}


def run_sweep(grid: list[str], launcher: str, sweep_dir: Path, data_dir: str) -> float:
    """Seconds for the whole sweep; SystemExit if it fails."""
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
    ]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"error: the {launcher} sweep failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return seconds


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
    from mnist_lab import report  # imports torch and tensorboard: only here

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
    parser.add_argument("--grid", nargs="+", default=["softmax_seeds", "mlp_lr", "mlp_batch_16"], choices=list(GRIDS))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_LAB_DATA_DIR", "data"))
    parser.add_argument("--out", default="/tmp/sweep_end_to_end", help="the sweeps' folders (replaced)")
    args = parser.parse_args()
    if args.compare:
        for job, row in agreement(Path(args.compare[0]), Path(args.compare[1])).items():
            print(json.dumps({"job": job, **row}))
        return
    for name in args.grid:
        times: dict[str, list[float]] = {"basic": [], "packed": []}
        found: dict[str, dict] = {}
        for repeat in range(args.repeats):
            for launcher in ("basic", "packed"):
                sweep_dir = Path(args.out) / f"{name}-{launcher}-{repeat}"
                times[launcher].append(round(run_sweep(GRIDS[name], launcher, sweep_dir, args.data_dir), 1))
                found[launcher] = records(sweep_dir)
        basic, packed = found["basic"], found["packed"]
        statuses = {r.get("status") for r in [*basic.values(), *packed.values()]}
        if basic.keys() != packed.keys() or statuses != {"ok"}:
            sys.exit(f"error: the two sweeps of {name} did not finish the same jobs with status ok ({statuses}).")
        difference = max(abs(basic[k]["best_val_acc"] - packed[k]["best_val_acc"]) for k in basic)
        row = {
            "grid": name,
            "jobs": len(basic),
            "basic_s": times["basic"],
            "packed_s": times["packed"],
            "ratio": [round(b / p, 2) for b, p in zip(times["basic"], times["packed"], strict=True)],
            "largest_best_val_acc_difference": difference,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
