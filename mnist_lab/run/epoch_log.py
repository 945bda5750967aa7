"""What one training epoch's steps did, kept on the device until the epoch ends.

- each step's loss goes into a device buffer (no host sync per step); the buffer is read once,
  at epoch end, for the per-step curve and the epoch's mean;
- the number of correct predictions is summed on the device;
- the losses are checked for NaN/inf, or a value above ``divergence_threshold``, every
  ``check_every`` steps: one host sync per check, so a diverging run stops within the epoch
  (``first_bad_steps``, the one divergence check, which a pack also runs on its jobs' losses);
- a clock times the training steps (stopped when validation starts, or at epoch end).

When the epoch ends, ``history_row`` makes it one row of the run's history (the per-epoch
lists of metrics.json).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

import torch


def first_bad_steps(
    losses: torch.Tensor, threshold: float | torch.Tensor, watched: torch.Tensor | None = None
) -> list[int | None]:
    """The divergence check: for each column of ``losses`` (``[steps, columns]``: a solo run's one
    column, or a pack's jobs), the index of its first NaN, inf or value above ``threshold`` (a
    number, or one per column), None where there is none. ``watched`` (a bool per column) leaves
    the other columns out (a pack's frozen jobs). One host sync when nothing is bad."""
    bad = ~torch.isfinite(losses) | (losses > threshold)
    if watched is not None:
        bad &= watched
    if not bool(bad.any()):
        return [None] * losses.shape[1]
    # argmax returns the first of equal maxima: the first bad step of each column
    found, first = bad.any(dim=0).tolist(), bad.int().argmax(dim=0).tolist()
    return [step if hit else None for hit, step in zip(found, first, strict=True)]


class EpochLog:
    """One epoch's losses, correct count, divergence checks and clock (see above).

    Args:
        steps: the most optimizer steps this epoch can take (the size of the loss buffer).
        device: where the losses and counts stay.
        first_step: optimizer steps done before this epoch, so that the divergence check
            reports a run-wide step number (1-based).
        check_every: steps between divergence checks.
        divergence_threshold: a loss above it also counts as diverged (Adam at lr=1e6 drives
            the loss to ~1e13 without ever reaching inf).
    """

    def __init__(
        self,
        steps: int,
        device: torch.device,
        first_step: int = 0,
        check_every: int = 50,
        divergence_threshold: float = 1e4,
    ):
        self.device, self.first_step = device, first_step
        self.check_every, self.divergence_threshold = check_every, divergence_threshold
        self.buffer = torch.zeros(steps, device=device)  # each step's loss
        self.steps = 0
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0
        self.checked = 0  # steps already checked
        self.time_s: float | None = None  # None while the clock runs
        self.started = time.perf_counter()

    @classmethod
    def finished(cls, losses: torch.Tensor, correct: int, images: int, time_s: float) -> EpochLog:
        """An epoch already trained elsewhere (one job of a pack), from its per-step losses, correct
        predictions, images seen and seconds: what ``history_row`` reads."""
        epoch = cls(0, losses.device)
        epoch.buffer, epoch.steps, epoch.seen, epoch.time_s = losses, len(losses), images, time_s
        epoch.correct = torch.tensor(correct, device=losses.device)
        return epoch

    def record(self, loss: torch.Tensor, correct: torch.Tensor, images: int) -> int | None:
        """Store one step; every ``check_every`` steps, check. Returns the step at which the
        loss went bad if this check found one, else None."""
        self.buffer[self.steps] = loss
        self.steps += 1
        self.correct += correct
        self.seen += images
        if self.steps % self.check_every == 0:
            return self.check()
        return None

    @property
    def losses(self) -> torch.Tensor:
        """The losses of the steps taken so far (on the device)."""
        return self.buffer[: self.steps]

    def check(self) -> int | None:
        """Check the steps since the last check: the run-wide step (1-based) of the first
        NaN, inf or too-large loss, else None."""
        start, self.checked = self.checked, self.steps
        (first,) = first_bad_steps(self.losses[start:, None], self.divergence_threshold)
        return None if first is None else self.first_step + start + first + 1

    def loss_at(self, step: int) -> float:
        """The loss at run-wide ``step``, as ``check`` numbers them."""
        return float(self.losses[step - self.first_step - 1])

    def stop_clock(self) -> float:
        """Stop the clock (once; later calls return the same time) and return the seconds."""
        if self.time_s is None:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.time_s = time.perf_counter() - self.started
        return self.time_s


# The run's history: one list per key, one entry per finished training epoch.
HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s")


def empty_history() -> dict[str, list[float]]:
    return {key: [] for key in HISTORY_KEYS}


def history_row(
    epoch: EpochLog, val_metrics: Mapping, lr: float, total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
) -> dict[str, float]:
    """A finished epoch as a row of the history (``HISTORY_KEYS``): its mean training loss (NaN
    if it took no step), training accuracy and time from ``epoch``; ``val/loss`` and ``val/acc``
    from ``val_metrics`` (Lightning's ``callback_metrics``; NaN where validation did not run).
    ``total`` sums the loss, correct, image and step counts over processes (under DDP each saw
    its share of the batches); by default this process's own."""
    losses = epoch.losses
    loss_sum, correct, seen, steps = total(
        torch.stack(
            [
                losses.sum(),
                epoch.correct.to(losses.dtype),
                torch.tensor(float(epoch.seen), device=epoch.device),
                torch.tensor(float(epoch.steps), device=epoch.device),
            ]
        )
    ).tolist()
    return {
        "train_loss": loss_sum / steps if steps else math.nan,
        "train_acc": correct / max(seen, 1),
        "val_loss": float(val_metrics.get("val/loss", math.nan)),
        "val_acc": float(val_metrics.get("val/acc", math.nan)),
        "lr": lr,
        "epoch_time_s": epoch.stop_clock(),
    }
