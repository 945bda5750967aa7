"""The LightningModule: one classifier that takes its net, loss, optimizer and scheduler from config.

It holds the Lightning hooks and the metrics; the mechanics live in their own units:
- the training step, ``step(x, y) -> (loss, correct)``: ``step.EagerStep``, or
  ``cuda_graph.GraphStep`` (the whole step replayed as one CUDA graph), and its optimizer,
  picked and built by ``step_factory.make_step``;
- the epoch's bookkeeping (per-step losses on the device, divergence check every
  ``check_every`` steps, the epoch clock) and its row of the history: ``epoch_log``;
- when the lr scheduler steps: ``schedules``;
- batches grouped per loader item when they are small: ``data.GroupedBatches``.

Optimization is manual, so the step is one function that can be captured, and no step makes a
host sync: each step's loss is written to TensorBoard (one value per step, with its global
step) at epoch end. See docs/performance.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lab import NUM_CLASSES
from mnist_lab.data.datamodule import grouping, optimizer_steps, ungroup
from mnist_lab.records.lightning_internals import count_optimizer_step
from mnist_lab.run.epoch_log import EpochLog, empty_history, history_row
from mnist_lab.run.process_group_exit import destroy_process_group_at_exit
from mnist_lab.run.schedules import PER_STEP_SCHEDULERS, build_scheduler, step_at_epoch_end
from mnist_lab.run.step import EagerStep, Step, ready_for_eager
from mnist_lab.run.step_factory import make_step
from mnist_lab.tracking.trackers import log_step_losses


def dropout_seed(seed: int, epoch: int) -> int:
    """The seed of the dropout stream at the start of ``epoch``: masks depend on (seed, epoch)
    only, so a resumed run, and a packed job (``PackedNet.seed_dropout``), draw the same ones."""
    return seed * 1_000_003 + epoch


class Classifier(L.LightningModule):
    """Image classifier for a study run.

    Args:
        net: maps images (B, 1, 28, 28) to logits (B, 10).
        loss: ``loss(logits, labels)`` -> scalar tensor.
        optimizer: ``optimizer(params)`` -> torch optimizer (a Hydra partial).
        scheduler: ``scheduler(optimizer)`` -> lr scheduler, or None.
        cuda_graph: "auto" (capture on CUDA when possible), "on" (fail if not), or "off".
        check_every: steps between NaN/inf checks of the training loss.
        divergence_threshold: a training loss above this also counts as diverged.
        config: the run's resolved config, stored in checkpoints so ``evaluate`` can rebuild it.
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable,
        scheduler: Callable | None = None,
        cuda_graph: str = "auto",
        check_every: int = 50,
        divergence_threshold: float = 1e4,
        config: dict | None = None,
    ):
        super().__init__()
        self.automatic_optimization = False
        # In checkpoints (evaluate rebuilds the run from it); the loggers get train.hparams_of.
        self.save_hyperparameters({"config": config or {}}, logger=False)
        self.net, self.loss = net, loss
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        self.cuda_graph, self.check_every = cuda_graph, check_every
        self.divergence_threshold = divergence_threshold
        self.step: Step | None = None  # made with the optimizer, in configure_optimizers
        self.epoch_log: EpochLog | None = None  # the training epoch under way, or the last one
        self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(2))
        self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro", validate_args=False) for _ in range(2)
        )
        self.history = empty_history()  # a row per finished epoch: metrics.json's lists
        self.diverged_at: int | None = None  # global step of the first NaN/inf/too-large loss

    def setup(self, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            destroy_process_group_at_exit()  # gloo's teardown at exit can abort: process_group_exit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ------------------------------------------------------------------ optimizers and the step

    def configure_optimizers(self):
        trainer = self._trainer  # None outside a fit: one device in float32
        # Made with each fit's optimizer: a graph from an earlier fit would replay on freed memory.
        self.step, optimizer = make_step(
            self.net,
            self.loss,
            self.make_optimizer,
            self.device,
            cuda_graph=self.cuda_graph,
            make_scheduler=self.make_scheduler,
            world_size=trainer.world_size if trainer else 1,
            precision=trainer.precision if trainer else "32-true",
            # Several processes: Lightning's backward, where DDP syncs the gradients. One: plain
            # loss.backward(), without manual_backward's per-step hook calls on every callback.
            backward=self.manual_backward if trainer and trainer.world_size > 1 else None,
            say=self.print,
        )
        if not self.make_scheduler:
            return optimizer
        return [optimizer], [build_scheduler(self.make_scheduler, optimizer, lambda: optimizer_steps(self.trainer))]

    # ------------------------------------------------------------------ training

    def on_train_start(self) -> None:
        if isinstance(self.step, EagerStep):  # after a resumed checkpoint has brought its param groups
            ready_for_eager(self.optimizers().optimizer)
        scheduler = self.lr_schedulers()
        self.per_step_scheduler = scheduler if isinstance(scheduler, PER_STEP_SCHEDULERS) else None
        self.grouping = grouping(self.trainer.train_dataloader)
        self.epoch_log = None

    def on_train_epoch_start(self) -> None:
        torch.manual_seed(dropout_seed(self.hparams.config.get("seed", 0), self.current_epoch))
        self.epoch_log = EpochLog(
            self.trainer.num_training_batches * self.grouping[1],
            self.device,
            first_step=self.trainer.global_step,
            check_every=self.check_every,
            divergence_threshold=self.divergence_threshold,
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        for x_part, y_part in ungroup(x, y, *self.grouping):
            loss, correct = self.step(x_part, y_part)
            diverged_at = self.epoch_log.record(loss, correct, len(y_part))
            self._count_optimizer_step()
            if self.per_step_scheduler is not None:
                self.per_step_scheduler.step()
            if diverged_at is not None:
                self._stop(diverged_at)
                return

    def _count_optimizer_step(self) -> None:
        count_optimizer_step(self.trainer)  # we step the raw optimizer (or replay a graph)

    def _stop(self, diverged_at: int) -> None:
        self.diverged_at = diverged_at
        self.print(f"loss became {self.epoch_log.loss_at(diverged_at)} at step {diverged_at}: stopping.")
        self.trainer.should_stop = True

    def on_validation_model_zero_grad(self) -> None:
        # Lightning frees the gradients before validation; a captured step keeps writing to
        # them, so zero them in place instead.
        self.zero_grad(set_to_none=not (self.step and self.step.keeps_grads))

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit" and self.epoch_log is not None:
            self.epoch_log.stop_clock()  # the epoch's time is the training steps' only

    def on_train_epoch_end(self) -> None:
        epoch = self.epoch_log
        epoch_time = epoch.stop_clock()
        if self.diverged_at is None and (diverged_at := epoch.check()) is not None:
            self._stop(diverged_at)
        self._write_step_losses(epoch.losses.cpu())
        lr = float(self.optimizers().optimizer.param_groups[0]["lr"])
        # Under DDP each process saw its share of the batches: sum over all (a no-op on one device).
        total = functools.partial(self.trainer.strategy.reduce, reduce_op="sum")
        row = history_row(epoch, self.trainer.callback_metrics, lr, total=total)
        for key, value in row.items():
            self.history[key].append(value)
        self.log_dict(
            {
                "train/loss_epoch": row["train_loss"],
                "train/acc": row["train_acc"],
                "lr": lr,
                "epoch_time_s": epoch_time,
            },
            on_epoch=True,
        )
        step_at_epoch_end(self.lr_schedulers(), row["val_acc"])

    def _write_step_losses(self, losses: torch.Tensor) -> None:
        """Every step's loss, as ``train/loss`` at its global step, written once per epoch."""
        log_step_losses(self.loggers, self.epoch_log.first_step, losses.tolist())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"], checkpoint["diverged_at"] = self.history, self.diverged_at

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":  # resuming, not testing
            self.history = checkpoint.get("history", self.history)
            self.diverged_at = checkpoint.get("diverged_at")

    def get_extra_state(self) -> dict:
        # Part of state_dict, which is what trainer.strategy=ddp_spawn sends back from the
        # process that trained to the one that started it: the history comes back with the weights.
        return {"history": self.history, "diverged_at": self.diverged_at}

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        if "_extra_state" not in state_dict:  # a checkpoint written before the history was part of it
            state_dict = {**state_dict, "_extra_state": None}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def set_extra_state(self, state: dict) -> None:
        testing = self._trainer is not None and self.trainer.state.fn != "fit"  # the best checkpoint's is older
        if isinstance(state, dict) and not testing:
            self.history = state.get("history", self.history)
            self.diverged_at = state.get("diverged_at", self.diverged_at)

    # ------------------------------------------------------------------ evaluation

    def _evaluate(self, batch, loss_metric: MeanMetric, acc_metric: MulticlassAccuracy) -> None:
        x, y = batch
        logits = self.net(x)
        # MeanMetric with nan_strategy="disable" ignores weights: expand so each image counts once.
        loss_metric.update(self.loss(logits, y).expand(len(y)))
        acc_metric.update(logits, y)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_acc)

    def on_validation_epoch_end(self) -> None:
        self.log_dict({"val/loss": self.val_loss, "val/acc": self.val_acc}, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_acc)

    def on_test_epoch_end(self) -> None:
        self.log_dict({"test/loss": self.test_loss, "test/acc": self.test_acc})
