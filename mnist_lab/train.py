"""Train one experiment: ``python -m mnist_lab.train [group=option ...] [key=value ...]``.

Builds data, net, loss, optimizer and scheduler from the Hydra config (``conf/``), fits with
Lightning, tests the best checkpoint (by val/acc) and writes ``metrics.json``, checkpoints and
TensorBoard events into the run dir. ``--multirun`` runs a grid; see README.md.
"""

from __future__ import annotations

# isort: off
import mnist_lab.cli.quiet_interrupt  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: on
import math
import shlex
import signal
import sys
import threading
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from mnist_lab import CONF_DIR
from mnist_lab.analysis.sweep import job_dirname  # noqa: F401  (registers ${job_dirname:...} for conf)
from mnist_lab.cli import sweep_clock
from mnist_lab.cli.console import first_line, print_config, quiet_lightning, settings_line, summary_line
from mnist_lab.cli.exit_codes import EXIT_DIVERGED, EXIT_ERROR, EXIT_INTERRUPTED, raise_terminated
from mnist_lab.cli.hydra_errors import hydra_errors_as_sentences, override_for_shell
from mnist_lab.cli.quick_exit import skip_final_collection
from mnist_lab.run.experiment import run


def resume_command(overrides: list[str], run_dir: Path) -> str:
    """The command that resumes this run, quoted for the shell (and the run dir for Hydra)."""
    kept = [o for o in overrides if not o.startswith("ckpt_path=")]
    return " ".join(
        [
            shlex.join(["python", "-m", "mnist_lab.train", *kept]),
            override_for_shell("hydra.run.dir", str(run_dir)),
            "ckpt_path=last",
        ]
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    overrides = list(hydra_cfg.overrides.task)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_terminated)  # SIGTERM is handled like Ctrl-C
    quiet_lightning()
    if cfg.get("print_config"):
        print_config(cfg)
    print(settings_line(cfg), flush=True)
    try:
        with sweep_clock.timed("records and images"):  # what is not training or evaluation
            metrics = run(cfg, run_dir, overrides, Path(hydra_cfg.sweep.dir) if multirun else None)
    except Exception as error:
        if multirun:  # one bad job must not end the sweep
            print(f"[failed] {first_line(error)}  run {run_dir}", file=sys.stderr)
            return math.nan
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    print(summary_line(metrics))
    if metrics["status"] == "interrupted":  # a sweep stops too: the user asked to stop
        sweep_dir = override_for_shell("hydra.sweep.dir", str(hydra_cfg.sweep.dir)) if multirun else ""
        resume = f"the same command, {sweep_dir} ckpt_path=last" if multirun else resume_command(overrides, run_dir)
        print(f"resume with: {resume}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED[metrics.get("stopped_by", "SIGINT")])
    if metrics["status"] == "diverged" and not multirun:
        sys.exit(EXIT_DIVERGED)
    best = metrics.get("best_val_acc")
    return best if best is not None else math.nan


if __name__ == "__main__":
    skip_final_collection()
    torch.set_float32_matmul_precision("high")
    with hydra_errors_as_sentences():
        main()
