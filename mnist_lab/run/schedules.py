"""When a run's learning-rate scheduler steps: after every optimizer step (one-cycle), or once
at each epoch's end (the others; ReduceLROnPlateau on the epoch's validation accuracy)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

# Schedulers that move the learning rate every optimizer step; the others move it per epoch.
PER_STEP_SCHEDULERS = (torch.optim.lr_scheduler.OneCycleLR,)


def build_scheduler(make_scheduler: Callable, optimizer: torch.optim.Optimizer, total_steps: Callable[[], int]):
    """``make_scheduler(optimizer)``; a per-step scheduler also gets the run's length in
    optimizer steps, ``total_steps()`` (asked only then: it needs the trainer's loader)."""
    if isinstance(make_scheduler, functools.partial) and issubclass(make_scheduler.func, PER_STEP_SCHEDULERS):
        return make_scheduler(optimizer, total_steps=total_steps())
    return make_scheduler(optimizer)


def per_step(scheduler) -> bool:
    """Whether ``scheduler`` steps after every optimizer step (else at epoch end)."""
    return isinstance(scheduler, PER_STEP_SCHEDULERS)


def step_at_epoch_end(scheduler, val_acc: float) -> None:
    """One epoch-end step of a per-epoch scheduler (ReduceLROnPlateau reads ``val_acc``); a
    per-step scheduler, or none, is left alone."""
    if scheduler is None or per_step(scheduler):
        return
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(val_acc)
    else:
        scheduler.step()
