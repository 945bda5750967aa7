"""The LightningModule: one classifier that takes its net, loss, optimizer and scheduler from config.

The training step is written for speed (see docs/performance.md):
- manual optimization, so the whole step (forward, loss, backward, optimizer step) is one
  function that can be captured as a CUDA graph (``cuda_graph.py``);
- no host sync inside the step: each step's loss is stored into a device buffer, and the
  buffer is written to TensorBoard (one value per step, with its global step) at epoch end;
- the loss is checked for NaN/inf (or a value above ``divergence_threshold``) every
  ``check_every`` steps, so a diverging run stops within the epoch, at the cost of one host
  sync per ``check_every`` steps.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from mnist_lab.cuda_graph import (
    GraphStep,
    graph_optimizer_kwargs,
    graph_unsupported_reason,
    ready_for_capture,
    skip_capture_check,
)

# Schedulers that move the learning rate every optimizer step; the others move it per epoch.
PER_STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR,)
# On CPU their fused kernel updates each tensor in one pass instead of six: a batch-1 MLP step
# takes 157 us instead of 251 us on the 2-core machine of docs/performance.md.
FUSED_ON_CPU = (torch.optim.Adam, torch.optim.AdamW)


class Classifier(L.LightningModule):
    """Image classifier for a study run.

    Args:
        net: maps images (B, 1, 28, 28) to logits (B, 10).
        loss: ``loss(logits, labels)`` -> scalar tensor.
        optimizer: ``optimizer(params)`` -> torch optimizer (a Hydra partial).
        scheduler: ``scheduler(optimizer)`` -> lr scheduler, or None.
        cuda_graph: "auto" (capture on CUDA when possible), "on" (fail if not), or "off".
        check_every: steps between NaN/inf checks of the training loss.
        divergence_threshold: a training loss above this also counts as diverged (Adam at
            lr=1e6 drives the loss to ~1e13 without ever reaching inf).
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
        self.save_hyperparameters({"config": config or {}})
        self.net, self.loss = net, loss
        self.make_optimizer, self.make_scheduler = optimizer, scheduler
        self.cuda_graph, self.check_every = cuda_graph, check_every
        self.divergence_threshold = divergence_threshold
        self.graph_step: GraphStep | None = None
        self.val_loss, self.test_loss = (MeanMetric(nan_strategy="disable") for _ in range(2))
        self.val_acc, self.test_acc = (
            MulticlassAccuracy(num_classes=10, average="micro", validate_args=False)
            for _ in range(2)
        )
        self.history: dict[str, list[float]] = {
            k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")
        }
        self.diverged_at: int | None = None  # global step of the first NaN/inf/too-large loss
        self.epoch_time: float | None = 0.0  # None while an epoch's clock runs (not in a sanity check)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    # ------------------------------------------------------------------ optimizers

    def configure_optimizers(self):
        use_graph = self._wants_graph()
        kwargs = graph_optimizer_kwargs(self.make_optimizer) if use_graph else {}
        chosen = getattr(self.make_optimizer, "keywords", {})
        optimizer_class = getattr(self.make_optimizer, "func", self.make_optimizer)
        if not use_graph and self.device.type == "cpu" and optimizer_class in FUSED_ON_CPU and "fused" not in chosen:
            kwargs["fused"] = True
        optimizer = self.make_optimizer(self.parameters(), **kwargs)
        if self.device.type == "cpu":
            skip_capture_check(optimizer)
        if not self.make_scheduler:
            return optimizer
        if isinstance(self.make_scheduler, functools.partial) and issubclass(
            self.make_scheduler.func, PER_STEP_SCHEDULERS
        ):  # one-cycle needs the run's length in steps
            scheduler = self.make_scheduler(optimizer, total_steps=self._total_steps())
        else:
            scheduler = self.make_scheduler(optimizer)
        return [optimizer], [scheduler]

    def _loader_group(self) -> tuple[int | None, int]:
        """(batch size, batches per loader item): see ``data.SAMPLES_PER_CALL``."""
        loader = self.trainer.train_dataloader
        return getattr(loader, "batch_size", None), getattr(loader, "group", 1)

    def _total_steps(self) -> int:
        """Optimizer steps in the whole run (Lightning counts loader items: groups of batches)."""
        trainer = self.trainer
        steps = int(trainer.estimated_stepping_batches)
        _, group = self._loader_group()
        if group == 1 or trainer.max_epochs in (None, -1):
            return steps
        per_epoch = min(int(trainer.num_training_batches) * group, trainer.train_dataloader.batches)
        total = per_epoch * trainer.max_epochs
        return min(total, trainer.max_steps) if trainer.max_steps > 0 else total

    def _wants_graph(self) -> bool:
        return self.cuda_graph != "off" and graph_unsupported_reason(self) is None

    # ------------------------------------------------------------------ training

    def on_train_start(self) -> None:
        reason = graph_unsupported_reason(self)
        self.use_graph = self.cuda_graph != "off" and reason is None
        self.graph_step = None  # a second fit rebuilt the optimizer: a graph from before would replay on freed memory
        if reason and (self.cuda_graph == "on" or (self.cuda_graph == "auto" and self.device.type == "cuda")):
            self._graph_off(reason)
        if self.use_graph:  # here, after a resumed checkpoint has brought its param groups
            ready_for_capture(self.optimizers().optimizer, self.device)
        scheduler = self.lr_schedulers()
        self.per_step_scheduler = scheduler if isinstance(scheduler, PER_STEP_SCHEDULERS) else None
        self.loader_batch_size, self.group = self._loader_group()

    def on_train_epoch_start(self) -> None:
        # Dropout masks depend on (seed, epoch) only, so a resumed run draws the same ones.
        torch.manual_seed(self.hparams.config.get("seed", 0) * 1_000_003 + self.current_epoch)
        n = self.trainer.num_training_batches * self.group
        self.step_losses = torch.zeros(n, device=self.device)
        self.steps_done = 0  # optimizer steps in this epoch
        self.train_correct = torch.zeros((), dtype=torch.long, device=self.device)
        self.train_seen = 0
        self.checked_up_to = 0
        self.first_step = self.trainer.global_step  # optimizer steps done before this epoch
        self.epoch_time = None
        self.epoch_started = time.perf_counter()

    def eager_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward, loss, backward, optimizer step. Returns (loss, number correct), on device."""
        optimizer = self.optimizers().optimizer
        logits = self.net(x)
        loss = self.loss(logits, y)
        optimizer.zero_grad(set_to_none=self.graph_step is None)  # a graph holds the .grad tensors
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.detach().argmax(dim=1) == y).sum()

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        if self.group == 1 or len(x) <= self.loader_batch_size:
            self._train_on(x, y)
            return
        for x_part, y_part in zip(x.split(self.loader_batch_size), y.split(self.loader_batch_size), strict=True):
            self._train_on(x_part, y_part)
            if self.diverged_at is not None:
                return

    def _train_on(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on one batch."""
        if self.use_graph and self.graph_step is None:
            self._capture_step(x, y)
        if self.graph_step is not None and len(x) == self.graph_step.batch_size:
            loss, correct = self.graph_step(x, y)
        else:
            loss, correct = self.eager_step(x, y)
        self.step_losses[self.steps_done] = loss
        self.steps_done += 1
        self.train_correct += correct
        self.train_seen += len(y)
        self._count_optimizer_step()
        if self.per_step_scheduler is not None:
            self.per_step_scheduler.step()
        if self.steps_done % self.check_every == 0:
            self._check_finite(self.steps_done)

    def _capture_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        try:
            self.graph_step = GraphStep(self, x, y)
        except RuntimeError as error:
            cause = error.__context__ or error  # capture_end's own error hides the first one
            self._graph_off(f"capturing the training step failed ({cause})")

    def _graph_off(self, reason: str) -> None:
        """Step eagerly and say why; with trainer.cuda_graph=on, stop instead."""
        if self.cuda_graph == "on":
            raise ValueError(f"trainer.cuda_graph=on but {reason}; use trainer.cuda_graph=auto.")
        self.use_graph = False
        self.print(f"CUDA graph off: {reason}; using the eager step.")

    def on_validation_model_zero_grad(self) -> None:
        # Lightning frees the gradients before validation; a captured step keeps writing to
        # them, so zero them in place instead.
        self.zero_grad(set_to_none=self.graph_step is None)

    def _count_optimizer_step(self) -> None:
        # We step the raw optimizer (or replay a graph), so tell Lightning a step happened:
        # global_step, max_steps and checkpoint names depend on it.
        progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
        progress.increment_ready()
        progress.increment_completed()

    def _check_finite(self, up_to: int) -> None:
        window = self.step_losses[self.checked_up_to : up_to]
        self.checked_up_to = up_to
        bad = ~torch.isfinite(window) | (window > self.divergence_threshold)
        if not bool(bad.any()):
            return
        first_bad = int(bad.nonzero()[0])
        self.diverged_at = self.first_step + up_to - len(window) + first_bad + 1
        self.print(f"loss became {window[first_bad].item()} at step {self.diverged_at}: stopping.")
        self.trainer.should_stop = True

    def _stop_epoch_clock(self) -> None:
        """Time the training steps only: called when validation starts, or at epoch end."""
        if self.epoch_time is None:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.epoch_time = time.perf_counter() - self.epoch_started

    def on_validation_start(self) -> None:
        if self.trainer.state.fn == "fit":
            self._stop_epoch_clock()

    def on_train_epoch_end(self) -> None:
        self._stop_epoch_clock()
        epoch_time = self.epoch_time
        n_done = self.steps_done
        if self.diverged_at is None:
            self._check_finite(n_done)
        losses = self.step_losses[:n_done]
        self._write_step_losses(losses.cpu())
        scheduler = self.lr_schedulers()
        lr = float(self.optimizers().optimizer.param_groups[0]["lr"])
        metrics = self.trainer.callback_metrics
        row = {
            "train_loss": float(losses.mean()) if n_done else math.nan,
            "train_acc": float(self.train_correct) / max(self.train_seen, 1),
            "val_loss": float(metrics.get("val/loss", math.nan)),
            "val_acc": float(metrics.get("val/acc", math.nan)),
            "lr": lr,
            "epoch_time_s": epoch_time,
        }
        for key, value in row.items():
            self.history[key].append(value)
        self.log_dict(
            {"train/loss_epoch": row["train_loss"], "train/acc": row["train_acc"], "lr": lr,
             "epoch_time_s": epoch_time},
            on_epoch=True,
        )  # fmt: skip
        if scheduler is not None and not isinstance(scheduler, PER_STEP_SCHEDULERS):
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(row["val_acc"])
            else:
                scheduler.step()

    def _write_step_losses(self, losses: torch.Tensor) -> None:
        """Every step's loss, as ``train/loss`` at its global step, written once per epoch."""
        writer = getattr(self.logger, "experiment", None) if self.logger else None
        if writer is None or not hasattr(writer, "add_scalar"):
            return
        first = self.first_step + 1
        for i, value in enumerate(losses.tolist()):
            writer.add_scalar("train/loss", value, first + i)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["history"], checkpoint["diverged_at"] = self.history, self.diverged_at

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":  # resuming, not testing
            self.history = checkpoint.get("history", self.history)
            self.diverged_at = checkpoint.get("diverged_at")

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
