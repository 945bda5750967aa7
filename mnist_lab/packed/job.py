"""One job of a pack, written as its solo run writes itself.

The pack trains; each job keeps the ``Classifier`` its solo run would train (its net refilled
from the pack, ``Pack.solo_net``), and its outputs go through the solo run's own code:
``run_dir.claim_run_dir`` and ``write_hydra_files`` (its folder and ``.hydra/``), ``RunRecord``
(``metrics.json``: the same hooks, called at the same points of training),
``epoch_log.history_row`` (a row of the history), ``trackers`` (TensorBoard's ``train/loss`` at
every step and the per-epoch scalars under the solo run's tags, and any ``logger=``), and
``run.evaluation.evaluate`` (the test of the best weights), and ``packed.images`` (the TensorBoard
images of ``callbacks.images``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_lab.cli import sweep_clock
from mnist_lab.cli.config_error import ConfigError
from mnist_lab.data.datamodule import DeviceBatches, split_tensors
from mnist_lab.packed.checkpoint import SoloTrainerState, save_checkpoint, solo_checkpoint
from mnist_lab.packed.images import PackedImages
from mnist_lab.records.run_dir import claim_run_dir, write_hydra_files
from mnist_lab.records.run_record import RunRecord, packed_epochs
from mnist_lab.run.classifier import Classifier
from mnist_lab.run.epoch_log import EpochLog, history_row
from mnist_lab.run.evaluation import evaluate
from mnist_lab.run.experiment import hparams_of
from mnist_lab.tracking.trackers import (
    build_loggers,
    close_trackers,
    log_as_lightning,
    log_step_losses,
    start_trackers,
)


class PackedRunRecord(RunRecord):
    """A packed job's ``RunRecord``: its ``train_time_s`` is its pack's training and validation
    time, added epoch by epoch (``add_training``), the same for every job of the pack; the job's
    own work around it (its start, each epoch's record, checkpoints and images, the final images)
    is timed apart, in ``bookkeeping_s``."""

    def _elapsed(self) -> float:
        return 0.0  # not this job's clock, which would count the other jobs' bookkeeping

    def add_training(self, seconds: float) -> None:
        self.train_time_s += seconds

    @contextmanager
    def bookkeeping(self) -> Iterator[None]:
        """Add the ``with`` block's wall time to ``bookkeeping_s`` (and to the sweep's records and images)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - started
            self.data["bookkeeping_s"] = self.data.get("bookkeeping_s", 0.0) + seconds
            sweep_clock.add("records and images", seconds)

    def on_save_checkpoint(self, trainer, module: Classifier, checkpoint: dict) -> None:
        super().on_save_checkpoint(trainer, module, checkpoint)
        checkpoint["bookkeeping_s"] = self.data.get("bookkeeping_s", 0.0)  # a resumed pack goes on from it


class PackedJob:
    """Job ``index`` of a pack, recorded in ``run_dir`` as a solo run of ``cfg`` would be."""

    def __init__(
        self,
        cfg: DictConfig,
        run_dir: Path,
        overrides: list[str],
        sweep_dir: Path,
        index: int,
        checkpoint: dict | None = None,
    ):
        self.cfg, self.run_dir, self.sweep_dir, self.index = cfg, run_dir, sweep_dir, index
        self.checkpoint = checkpoint  # the last.ckpt it resumes (loaded into the pack), or None
        self.record = PackedRunRecord(run_dir, overrides, hparams_of(cfg, overrides))
        self.module: Classifier | None = None
        self.loggers: list = []
        self.images: PackedImages | None = None
        self.best_val_acc: float | None = None
        self.best_weights: dict | None = None
        self.trainer_state: SoloTrainerState | None = None  # what its checkpoints hold of a Trainer
        self.last_saved: Path | None = None
        self.scratch: torch.nn.Module | None = None  # its solo net, to cut its optimizer state into
        self.checkpoints = run_dir / "checkpoints"
        self.global_step = 0  # optimizer steps the job has made

    def claim(self) -> None:
        """Make the run dir this job's and write ``.hydra/`` (inside the job's Hydra context, as
        ``run.experiment.run`` does); a ``ConfigError`` if it is another run's, with nothing written. A
        resumed job (``ckpt_path=last``) adopts its record, as ``run.experiment.run`` does."""
        claim_run_dir(self.cfg, self.run_dir, self.record, self.sweep_dir)
        write_hydra_files(self.run_dir, self.cfg)

    def start(self, pack) -> None:
        """Its trackers and the record's start of training; a failure is recorded and raised."""
        with self.record.bookkeeping():
            self._start(pack)

    def _start(self, pack) -> None:
        cfg = self.cfg
        try:
            self.module = Classifier(
                net=pack.solo_net(self.index),
                loss=instantiate(cfg.loss),
                optimizer=instantiate(cfg.optimizer),
                scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
                **cfg.step,
                config=OmegaConf.to_container(cfg, resolve=True),
            ).to(pack.device)
            if (cfg.get("callbacks") or {}).get("checkpoint") is not None:
                self.trainer_state = SoloTrainerState(cfg, self.run_dir)
            self.loggers = build_loggers(cfg, self.run_dir, self.sweep_dir)
            start_trackers(self.loggers, self.record.hparams)
            self.images = PackedImages.for_job(cfg, self.loggers)
            if self.images is not None and pack.epoch == 0:  # a resumed run wrote it already, as solo
                self.images.samples(pack.batches.loaders[self.index])
            if self.checkpoint is not None:
                self._continue(self.checkpoint)
        except Exception as error:
            self.fail(error)
            raise
        self.record.on_train_start(None, self.module)
        self.record.data["packed"] = pack.models  # jobs in its pack: train_time_s is the pack's time
        # its epochs trained in a pack, so far (a resumed one's checkpoint says how many before)
        self.record.data["packed_epochs"] = packed_epochs(self.checkpoint) if self.checkpoint else 0

    def _continue(self, checkpoint: dict) -> None:
        """Go on from the ``last.ckpt`` the pack resumed, as a solo run resumed from it goes on:
        its history and training time (``Classifier`` and ``RunRecord``'s ``on_load_checkpoint``),
        its step count, and ``callbacks.checkpoint``'s best score and files (the best weights
        from ``best.ckpt``, which the test loads)."""
        self.module.history = checkpoint["history"]
        self.record.train_time_s = checkpoint.get("train_time_s", 0.0)
        self.record.data["bookkeeping_s"] = checkpoint.get("bookkeeping_s", 0.0)
        self.global_step = int(checkpoint["global_step"])
        if self.trainer_state is None:
            return
        callback = self.trainer_state.checkpoint
        state = checkpoint.get("callbacks", {}).get(callback.state_key, {})
        folder = Path(callback.dirpath)
        self.last_saved = folder / "last.ckpt"
        best = folder / Path(state.get("best_model_path") or "best.ckpt").name
        if state.get("best_model_score") is not None and best.is_file():
            self.best_val_acc = float(state["best_model_score"])
            saved = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            self.best_weights = {k.removeprefix("net."): v for k, v in saved.items() if k.startswith("net.")}

    @property
    def trainer(self) -> SimpleNamespace:
        """What ``RunRecord.finish`` reads of a Trainer: its first logger (TensorBoard)."""
        return SimpleNamespace(logger=self.loggers[0] if self.loggers else None)

    def end_epoch(self, pack, epoch: int, first_step: int, losses: torch.Tensor, stats: dict) -> None:
        """Record one finished epoch (called after the pack's schedulers made their epoch step,
        as a solo run checkpoints after its own): ``losses`` are the job's per-step losses (on
        the CPU), ``stats`` its correct count, images seen, val loss and acc, lr, the epoch's
        seconds of training and (``pack_time_s``) of the pack's training and validation."""
        self._check_folder()
        self.record.add_training(stats["pack_time_s"])
        with self.record.bookkeeping():
            self._end_epoch(pack, epoch, first_step, losses, stats)

    def _end_epoch(self, pack, epoch: int, first_step: int, losses: torch.Tensor, stats: dict) -> None:
        module = self.module
        pack.net.copy_into(self.index, module.net)
        module.diverged_at = pack.diverged_at[self.index]
        log_step_losses(self.loggers, first_step, losses.tolist())
        finished = EpochLog.finished(losses, stats["correct"], stats["images"], stats["time_s"])
        val = {"val/loss": stats["val_loss"], "val/acc": stats["val_acc"]}
        row = history_row(finished, val, stats["lr"])
        for key, value in row.items():
            module.history[key].append(value)
        global_step = self.global_step = first_step + len(losses)
        self.record.data["packed_epochs"] = epoch + 1  # before the checkpoints, which carry it
        if self.images is not None:
            self.images.validated(module.net, pack.val_x, pack.val_y, self.cfg.data.eval_batch_size, global_step)
        train = {
            "train/loss_epoch": row["train_loss"],
            "train/acc": row["train_acc"],
            "lr": row["lr"],
            "epoch_time_s": row["epoch_time_s"],
        }
        # as the solo run logs them, at its validation's end, then its epoch's, at the epoch's last step
        # counted from 0; flushed before the checkpoints say the epoch is done
        log_as_lightning(self.loggers, (val, train), global_step - 1, epoch)
        self._save(pack, epoch, global_step, row["val_acc"])
        self.record.on_train_epoch_start(None, module)  # metrics.json with this epoch's row

    def _save(self, pack, epoch: int, global_step: int, val_acc: float) -> None:
        """As ``callbacks.checkpoint`` (``RunDirCheckpoint``): ``last.ckpt`` every epoch, and the
        best (``<filename>.ckpt``) when val/acc beats every earlier epoch, strictly, so the first
        of equal epochs stays the best; each with the callback's state as it is when written."""
        improved = math.isfinite(val_acc) and (self.best_val_acc is None or val_acc > self.best_val_acc)
        node = (self.cfg.get("callbacks") or {}).get("checkpoint")
        if node is None:  # ~callbacks.checkpoint: no files, and the test uses the last weights
            return
        folder = Path(self.trainer_state.checkpoint.dirpath)
        best_path = folder / f"{node.get('filename', 'best')}.ckpt"
        if improved:
            self.best_val_acc = val_acc
            self.best_weights = copy.deepcopy(self.module.net.state_dict())
        if not improved and not node.get("save_last"):  # nothing to write this epoch
            return
        best = (best_path, self.best_val_acc) if self.best_val_acc is not None else None
        if self.scratch is None:  # a net to cut the optimizer's state into, kept for every checkpoint
            self.scratch = pack.solo_net(self.index)
        state = self.trainer_state
        # Built once: the best and the last file differ only in which last file the callback's state names.
        checkpoint = solo_checkpoint(
            self.module, self.record, pack, self.index, state, epoch, global_step, {}, self.scratch
        )
        if improved:  # Lightning saves the best first, its state naming the last file as it was
            checkpoint["callbacks"] = state.callbacks(best, val_acc, self.last_saved)
            save_checkpoint(checkpoint, best_path)
        if node.get("save_last"):
            self.last_saved = folder / "last.ckpt"
            checkpoint["callbacks"] = state.callbacks(best, val_acc, self.last_saved)
            save_checkpoint(checkpoint, self.last_saved)

    def _check_folder(self) -> None:
        """Refuse to write into a run dir that was removed while the job trained (before its
        TensorBoard writer, whose thread would print a traceback, finds it gone)."""
        if not self.run_dir.is_dir():
            raise ConfigError(
                f"the job's folder {self.run_dir} was removed while it trained; rerun the sweep with "
                "ckpt_path=last to train this job again"
            )

    def finish(self) -> dict:
        """Test the best weights (not after a divergence, as the solo run) and write the final
        record; return it."""
        self._check_folder()
        module = self.module
        with self.record.bookkeeping():
            self.record.on_train_end(None, module)
        test, confusion = None, None
        if module.diverged_at is None:
            if self.best_weights is not None:
                module.net.load_state_dict(self.best_weights)
            with sweep_clock.timed("evaluation"):
                test, confusion = self._test()
        with self.record.bookkeeping():
            if test is not None:  # after fitting, the trainer's epoch is the count of epochs trained
                log_as_lightning(self.loggers, [test], self.global_step, len(module.history["val_acc"]))
            if self.images is not None:
                self.images.finish(confusion, self.global_step)
        with sweep_clock.timed("records and images"):  # the final record: bookkeeping_s cannot hold its own writing
            data = self.record.finish(self.trainer, module, test)
            self._close()
        return data

    def _test(self) -> tuple[dict, torch.Tensor]:
        data, device = self.cfg.data, self.module.device
        tensors = split_tensors(data, device)
        batches = DeviceBatches(tensors["test_x"], tensors["test_y"], data.eval_batch_size)
        results = evaluate(self.module.net, self.module.loss, batches, device)
        return {"test/loss": results["test_loss"], "test/acc": results["test_acc"]}, results["confusion"]

    def fail(self, error: BaseException) -> None:
        """Record status "failed" (with the history so far, if training started)."""
        self.record.fail(error, self.module if self.module is not None and self.record.train_started else None)
        self._close()

    def interrupt(self, stop: KeyboardInterrupt) -> None:
        self.record.interrupt(stop, self.module if self.module is not None and self.record.train_started else None)
        self._close()

    def _close(self) -> None:
        if self.images is not None and self.images.mistakes:  # a failed or interrupted job keeps its grids
            self.images.finish()
        artifacts = {self.checkpoints / "best.ckpt": "checkpoints", self.record.path: None}
        close_trackers(self.loggers, self.record.data, artifacts)
