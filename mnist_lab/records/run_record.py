"""``metrics.json``: what a run did, rewritten (atomically) after every epoch and at the end.

Status is "running" while training, then "ok", "diverged" (NaN/inf loss; ``diverged_at_step``
says where), "failed" (``error`` holds the first line of the error) or "interrupted" (Ctrl-C
or SIGTERM; resume with ``ckpt_path=last``). A sweep's report reads these files.

A job that trained in a pack (``packed.job``) has ``packed`` (the jobs in its pack) and
``packed_epochs`` (how many of its epochs, the first ones, trained there: their time in
``train_time_s`` is the pack's). Its checkpoints carry both, so a resume alone keeps them.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from mnist_lab.cli import sweep_clock
from mnist_lab.cli.console import first_line
from mnist_lab.cli.exit_codes import Terminated
from mnist_lab.records.metrics_file import METRICS_FILE, finite_or_none, record_or_empty, write_json_atomic

__all__ = ["METRICS_FILE", "RunRecord", "Terminated", "finite_or_none", "first_line", "write_json_atomic"]

PACKED_FIELDS = ("packed", "packed_epochs")  # in metrics.json and checkpoints: the epochs trained in a pack


def packed_epochs(checkpoint: dict) -> int:
    """How many of the epochs a checkpoint holds trained in a pack (one written before the field
    existed is a packed job's: all of them; 0 for a job that never packed)."""
    if not checkpoint.get("packed"):
        return 0
    return int(checkpoint.get("packed_epochs", checkpoint["epoch"] + 1))


def write_record(path: Path, data: dict, exclusive: bool = False) -> bool:
    """``write_json_atomic`` in the first process (rank 0) only: under DDP the other processes'
    records are the same run's."""
    if rank_zero_only.rank > 0:
        return True
    return write_json_atomic(path, data, exclusive=exclusive)


class RunRecord(L.Callback):
    """Keeps ``<run_dir>/metrics.json`` current; ``finish`` writes the final status."""

    def __init__(self, run_dir: str | os.PathLike, overrides: list[str], hparams: dict):
        self.path = Path(run_dir) / METRICS_FILE
        self.hparams = hparams
        self.train_started: float | None = None
        self.train_time_s = 0.0
        self.data: dict = {"status": "running", "overrides": overrides, "run_dir": str(run_dir)}
        # A resume adopts the record already there: it stays as it is unless this run trains
        # or finishes, so a resume that fails or is stopped before either loses nothing.
        self.adopted = False

    def claim(self, exclusive: bool) -> bool:
        """Write the first record (status "running"); with ``exclusive``, only into a run dir
        that holds no record yet. False if another run's record is there."""
        return write_record(self.path, self.data, exclusive=exclusive)

    def adopt(self) -> None:
        """Resume the run recorded in this dir: write nothing until it trains or finishes."""
        self.adopted = True

    def _update(self, module: L.LightningModule, status: str) -> None:
        history = module.history
        val_acc = [v for v in history["val_acc"] if math.isfinite(v)]
        elapsed = self._elapsed()
        self.data.update(
            status=status,
            epochs=len(history["val_acc"]),
            train_time_s=self.train_time_s + elapsed,
            best_val_acc=max(val_acc) if val_acc else None,
            final_train_loss=history["train_loss"][-1] if history["train_loss"] else None,
            device=self.data.get("device", str(module.device)),  # after test, Lightning has moved it to the CPU
            diverged_at_step=module.diverged_at,
            **history,
        )
        write_record(self.path, finite_or_none(self.data))

    def _elapsed(self) -> float:
        """Seconds of training since ``on_train_start`` (of this fit: ``train_time_s`` holds the rest)."""
        return time.perf_counter() - self.train_started if self.train_started else 0.0

    def on_save_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        checkpoint["train_time_s"] = self.train_time_s + self._elapsed()
        checkpoint.update({key: self.data[key] for key in PACKED_FIELDS if key in self.data})

    def on_load_checkpoint(self, trainer: L.Trainer, module: L.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":  # resuming: add the training time before the interruption
            self.train_time_s = checkpoint.get("train_time_s", 0.0)
            if checkpoint.get("packed"):
                self.data["packed"] = checkpoint["packed"]
                self.data["packed_epochs"] = packed_epochs(checkpoint)

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.train_started = time.perf_counter()
        self.adopted = False  # training again: what happens now is this record's to say
        self.data.setdefault("train_started_at", time.time())  # unix time; benchmarks/startup.py
        self.data["device"] = str(module.device)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if module.history["val_acc"]:  # the previous epoch is complete (and checkpointed)
            self._update(module, "running")

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        sweep_clock.add("training", self._elapsed())
        self.train_time_s += self._elapsed()
        self.train_started = None
        self._update(module, "diverged" if module.diverged_at is not None else "running")

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupt(exception, module)
        else:
            self.fail(exception, module)

    def interrupt(self, exception: KeyboardInterrupt, module: L.LightningModule | None = None) -> None:
        """Record status "interrupted" and the signal (SIGINT for Ctrl-C, or SIGTERM)."""
        self.data["stopped_by"] = "SIGTERM" if isinstance(exception, Terminated) else "SIGINT"
        self._set_status("interrupted", module)

    def fail(self, exception: BaseException, module: L.LightningModule | None = None) -> None:
        """Record status "failed" with the error's first line (before or during training)."""
        self.data["error"] = first_line(exception)
        self._set_status("failed", module)

    def _set_status(self, status: str, module: L.LightningModule | None) -> None:
        """With the module's history when there is one (the run got as far as Lightning)."""
        if self.adopted:  # nothing trained yet: the record on disk still says what happened
            self.data["status"] = status  # (what this command prints and exits with)
            return
        if module is not None:
            self._update(module, status)
        else:
            self.data["status"] = status
            write_record(self.path, finite_or_none(self.data))

    def finish(self, trainer: L.Trainer, module: L.LightningModule, test: dict | None) -> dict:
        """Write the final record (and the TensorBoard HParams entry); return it."""
        if test:
            self.data.update(test_acc=test.get("test/acc"), test_loss=test.get("test/loss"))
        status = "diverged" if module.diverged_at is not None else "ok"
        if "train_started_at" not in self.data:  # this process did not train (ddp_spawn, a re-test)
            self.data.update(self._trained_elsewhere())
        self._update(module, status)
        if trainer.logger is not None:
            metrics = {
                "best/val_acc": self.data.get("best_val_acc") or 0.0,
                "test/acc": self.data.get("test_acc") or 0.0,
                "train_time_s": self.data["train_time_s"],
            }
            trainer.logger.log_hyperparams(self.hparams, metrics)
            trainer.logger.finalize("success")
        return self.data

    def _trained_elsewhere(self) -> dict:
        """When and where the process that trained (trainer.strategy=ddp_spawn's rank 0, or an
        earlier run of a resumed record) says it trained, from the record it wrote."""
        on_disk = record_or_empty(self.path)
        kept = {k: on_disk[k] for k in ("train_started_at", "device") if k in on_disk}
        if isinstance(on_disk.get("train_time_s"), (int, float)) and not self.train_time_s:
            self.train_time_s = on_disk["train_time_s"]
        return kept
