"""Train one experiment: ``python -m mnist_lab.train [group=option ...] [key=value ...]``.

Builds data, net, loss, optimizer and scheduler from the Hydra config (``conf/``), fits with
Lightning, tests the best checkpoint (by val/acc) and writes ``metrics.json``, checkpoints and
TensorBoard events into the run dir. ``--multirun`` runs a grid; see README.md.
"""

from __future__ import annotations

# isort: off
import mnist_lab.quiet_interrupt  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: on
import math
import shlex
import signal
import sys
import threading
from pathlib import Path

import hydra
import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import TorchCheckpointIO
from omegaconf import DictConfig, OmegaConf

from mnist_lab import CONF_DIR, sweep_clock
from mnist_lab.atomic_files import replaced_atomically
from mnist_lab.checkpoint_checks import check_checkpoint
from mnist_lab.classifier import Classifier
from mnist_lab.config_checks import ConfigError, as_config_error, check_config, check_required
from mnist_lab.console import print_config, quiet_lightning, settings_line
from mnist_lab.hydra_errors import hydra_errors_as_sentences, override_for_shell
from mnist_lab.run_dir import claim_run_dir, resume_path, write_hydra_files
from mnist_lab.run_record import RunRecord, Terminated, first_line
from mnist_lab.sweep import job_dirname  # noqa: F401  (registers ${job_dirname:...} for conf)
from mnist_lab.trackers import build_loggers, close_trackers, start_trackers

# Exit codes of a single run (docs/reliability.md). A --multirun exits 0 whatever its jobs did
# (the report lists them), except when it is interrupted.
EXIT_ERROR = 1  # bad input (one "error: ..." line) or a failed run
EXIT_DIVERGED = 3  # NaN/inf loss: metrics.json says status "diverged" and the step
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells do


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save each checkpoint under a temporary name beside it, then rename: a kill -9 while
    saving leaves the previous last.ckpt whole, so ``ckpt_path=last`` always finds one.

    (Lightning writes into the system temp dir and moves the file into place, which is a copy,
    not a rename, when that dir is on another filesystem.)
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        # not named *.ckpt while half-written: nothing that looks for checkpoints picks it up
        with replaced_atomically(Path(path), suffix=".tmp") as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def hparams_of(cfg: DictConfig, overrides: list[str]) -> dict:
    """What TensorBoard's HParams tab compares: the swept keys plus the usual suspects."""
    hparams = {
        "model": cfg.model._target_.rsplit(".", 1)[-1],
        "optimizer": cfg.optimizer._target_.rsplit(".", 1)[-1],
        "loss": cfg.loss._target_.rsplit(".", 1)[-1] + (f":{cfg.loss.distance}" if "distance" in cfg.loss else ""),
        "lr": cfg.optimizer.lr,
        "batch_size": cfg.data.batch_size,
    }
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        if key == "logger" or key.startswith("logger."):
            continue  # where the results go, not what made them
        hparams.setdefault(key, OmegaConf.select(cfg, key, default=value))  # typed: 0.1, not "0.1"
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in hparams.items()}


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[L.Callback]:
    """One Lightning callback per entry of the ``callbacks`` group (conf/callbacks/default.yaml),
    but early stopping while its patience is null and the progress bar when no one watches."""
    callbacks = []
    for name, node in (cfg.get("callbacks") or {}).items():
        if (name == "early_stopping" and node.get("patience") is None) or (
            name == "progress_bar" and not sys.stdout.isatty()
        ):
            continue
        kwargs = {"dirpath": run_dir / node.dirpath} if node.get("dirpath") else {}  # inside the run dir
        callbacks.append(instantiate(node, **kwargs))
    return callbacks


def build_trainer(cfg: DictConfig, run_dir: Path, callbacks: list[L.Callback], loggers: list[Logger]) -> L.Trainer:
    callbacks = [*build_callbacks(cfg, run_dir), *callbacks]
    return L.Trainer(
        **cfg.trainer,
        plugins=[AtomicCheckpointIO()],
        logger=loggers,  # TensorBoard first: RunRecord.finish writes its HParams entry
        callbacks=callbacks,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=any(isinstance(c, ProgressBar) for c in callbacks),
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
    )


def run(cfg: DictConfig, run_dir: Path, overrides: list[str], sweep_dir: Path | None = None):
    """Check the settings, fit, test and record one experiment; return its metrics.json content.

    Any error is recorded in metrics.json (status "failed" and the error's first line) before
    it propagates, so a sweep's report shows the job like any other. Ctrl-C or SIGTERM is
    recorded as status "interrupted" and the record returned.
    """
    check_required(cfg)  # the keys hparams_of and the claim read
    record = RunRecord(run_dir, overrides, hparams_of(cfg, overrides))
    claim_run_dir(cfg, run_dir, record, sweep_dir)  # raises, writing nothing, if not ours
    if not record.adopted:
        write_hydra_files(run_dir, cfg)
    loggers: list[Logger] = []
    try:
        check_config(cfg)
        resume = resume_path(cfg.ckpt_path, run_dir)
        check_checkpoint(cfg, resume)
        loggers = build_loggers(cfg, run_dir, sweep_dir)  # after every check: a refused job starts no tracker run
        start_trackers(loggers, record.hparams)
        if record.adopted:  # a resume that passed its checks: its settings are the run's now
            write_hydra_files(run_dir, cfg)
        return fit_and_test(cfg, run_dir, record, loggers, resume)
    except (KeyboardInterrupt, SystemExit) as stop:
        # Ctrl-C or SIGTERM (raise_terminated). Inside fit and test, Lightning records it
        # (RunRecord.on_exception) and calls sys.exit(1); elsewhere it arrives here as is.
        if isinstance(stop, KeyboardInterrupt):
            record.interrupt(stop)
        elif record.data["status"] != "interrupted":
            raise
        return record.data
    except Exception as error:
        if isinstance(error, InstantiationException) and error.__cause__ is not None:
            error = error.__cause__  # the constructor's own message, not Hydra's wrapper
        error = as_config_error(error, cfg)  # out of memory: what to lower
        record.fail(error)
        raise error from None
    finally:  # each tracker run ends with its status, before a sweep's next job starts its own
        artifacts = {run_dir / "checkpoints" / "best.ckpt": "checkpoints", record.path: None}
        close_trackers(loggers, record.data, artifacts)


def fit_and_test(
    cfg: DictConfig, run_dir: Path, record: RunRecord, loggers: list[Logger], resume: Path | None = None
) -> dict:
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    module = Classifier(
        net=instantiate(cfg.model),
        loss=instantiate(cfg.loss),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        **cfg.step,
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    trainer = build_trainer(cfg, run_dir, [record], loggers)
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    if not module.history["val_acc"]:  # e.g. trainer.max_steps=0: an untrained net is no result
        raise ConfigError(
            "no training epoch ran (see trainer.limit_train_batches and "
            "trainer.max_steps), so there is nothing to test or record; allow at least one batch."
        )
    test = None
    if module.diverged_at is None:
        checkpoints = trainer.checkpoint_callback  # None with ~callbacks.checkpoint: test the last weights
        best = (checkpoints.best_model_path or None) if checkpoints else None
        with sweep_clock.timed("evaluation"):
            test = trainer.test(module, datamodule=datamodule, ckpt_path=best, verbose=False, weights_only=True)[0]
    return record.finish(trainer, module, test)


def summary_line(metrics: dict) -> str:
    def pct(v):
        return "n/a" if v is None else f"{v:.4f}"

    return (
        f"[{metrics['status']}] test/acc {pct(metrics.get('test_acc'))}  "
        f"val/acc {pct(metrics.get('best_val_acc'))}  time {metrics.get('train_time_s', 0):.1f}s  "
        f"run {metrics['run_dir']}"
    )


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


def raise_terminated(signum, frame) -> None:
    raise Terminated()


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
        with sweep_clock.rest_to("records and images"):  # what is not training or evaluation
            metrics = run(cfg, run_dir, overrides, Path(hydra_cfg.sweep.dir) if multirun else None)
    except Exception as error:
        if multirun:  # one bad job must not end the sweep
            print(f"[failed] {first_line(error)}  run {run_dir}", file=sys.stderr)
            return math.nan
        print(f"error: {error}", file=sys.stderr)
        sys.exit(EXIT_ERROR)
    print(summary_line(metrics))
    if metrics["status"] == "interrupted":  # a sweep stops too: the user asked to stop
        print(
            "resume with: "
            + (
                resume_command(overrides, run_dir)
                if not multirun
                else f"the same command, hydra.sweep.dir={hydra_cfg.sweep.dir} ckpt_path=last"
            ),
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERRUPTED[metrics.get("stopped_by", "SIGINT")])
    if metrics["status"] == "diverged" and not multirun:
        sys.exit(EXIT_DIVERGED)
    best = metrics.get("best_val_acc")
    return best if best is not None else math.nan


if __name__ == "__main__":
    torch.set_float32_matmul_precision("high")
    with hydra_errors_as_sentences():
        main()
