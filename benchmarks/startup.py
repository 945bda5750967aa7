"""Seconds from process start to the first training step of ``python -m mnist_lab.train``.

Runs the real command (a fresh Python process, as a user types it) ``--repeats`` times with a
short training (``trainer.limit_train_batches``), and reads ``train_started_at`` from each
run's metrics.json: the moment Lightning's ``on_train_start`` fires, right before the first
batch. Reports the median start-to-first-step and the median whole-command wall time.
MNIST must be acquired already (the parsed cache in the data dir), as for every run but the
first.

    python -m benchmarks.startup [--repeats 5] [--data data] [overrides ...]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHORT = ["trainer.max_epochs=1", "trainer.limit_train_batches=10", "trainer.limit_val_batches=1"]


def one_run(data_dir: str, overrides: list[str]) -> tuple[float, float]:
    """(process start to first step, whole command) in seconds, for one fresh process."""
    with tempfile.TemporaryDirectory() as run_dir:
        env = {**os.environ, "MNIST_LAB_DATA_DIR": str(Path(data_dir).resolve())}
        command = [sys.executable, "-m", "mnist_lab.train", *SHORT, *overrides, f"hydra.run.dir={run_dir}"]
        started = time.time()
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"the timed run failed ({shlex.join(command)}):\n{result.stderr[-2000:]}")
        wall = time.time() - started
        metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
    return metrics["train_started_at"] - started, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default="data")
    parser.add_argument("overrides", nargs="*", help="more overrides for the command")
    args = parser.parse_args()
    runs = [one_run(args.data, args.overrides) for _ in range(args.repeats)]
    to_first_step, wall = zip(*runs, strict=True)
    print(
        f"start to first step: median {statistics.median(to_first_step):.2f} s  "
        f"({', '.join(f'{t:.2f}' for t in to_first_step)})"
    )
    print(f"whole command ({' '.join(SHORT)}): median {statistics.median(wall):.2f} s")


if __name__ == "__main__":
    main()
