"""Each packed job's learning rate, from its own torch scheduler.

Schedules are not re-implemented: each job gets its real scheduler (its config's class and
arguments), attached to a stand-in optimizer of the job's own optimizer class and settings over
one dummy parameter that never learns. Stepping that scheduler as the solo run steps its own
(``Classifier``: one-cycle after every optimizer step, the others at each epoch's end,
ReduceLROnPlateau with the epoch's val/acc) gives the job's lr (and, for schedulers that cycle
momentum, its momentum or betas), which is then copied into the packed optimizer's tensors.

Per-step schedules are read a whole epoch ahead into a ``[steps, M]`` table on the device, so the
training steps index it instead of making M Python scheduler calls and a host-to-device copy
per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mnist_lab.packed.optimizer import PackedOptimizer
from mnist_lab.run.schedules import PER_STEP_SCHEDULERS

# What a scheduler may change in its optimizer's param group, and the packed optimizer follows.
SCHEDULED = ("lr", "momentum", "betas")


def scheduler_class(make_scheduler) -> type | None:
    return None if make_scheduler is None else getattr(make_scheduler, "func", make_scheduler)


class JobSchedules:
    """The M jobs' schedulers; ``None`` entries (no scheduler) must be all or nothing.

    Args:
        make_optimizers: each job's optimizer (a Hydra partial), for its stand-in.
        make_schedulers: each job's scheduler (a Hydra partial) or None.
        total_steps: optimizer steps in the whole run (one-cycle needs it, as in the solo run).
    """

    def __init__(self, make_optimizers: Sequence, make_schedulers: Sequence, total_steps: int):
        classes = {scheduler_class(m) for m in make_schedulers}
        if len(classes) > 1:
            raise ValueError(f"the schedulers of a pack differ in class: {sorted(map(str, classes))}")
        cls = classes.pop()
        self.per_step = cls is not None and issubclass(cls, PER_STEP_SCHEDULERS)
        self.plateau = cls is not None and issubclass(cls, torch.optim.lr_scheduler.ReduceLROnPlateau)
        self.optimizers, self.schedulers = [], []
        for make_optimizer, make_scheduler in zip(make_optimizers, make_schedulers, strict=True):
            optimizer = make_optimizer([torch.zeros(1, requires_grad=True)])
            self.optimizers.append(optimizer)
            if make_scheduler is None:
                continue
            if self.per_step:
                self.schedulers.append(make_scheduler(optimizer, total_steps=total_steps))
            else:
                self.schedulers.append(make_scheduler(optimizer))
        self.keys = [k for k in SCHEDULED if k in self.optimizers[0].param_groups[0]]

    def current(self) -> dict[str, list]:
        """Each job's lr (and momentum/betas) now, as its stand-in optimizer holds them."""
        groups = [optimizer.param_groups[0] for optimizer in self.optimizers]
        return {key: [float(g[key]) if key != "betas" else list(g[key]) for g in groups] for key in self.keys}

    def apply(self, optimizer: PackedOptimizer) -> None:
        """Copy the current values into the packed optimizer (one host-to-device copy each)."""
        for key, values in self.current().items():
            if key == "betas" or key in optimizer.hyper:
                optimizer.set(key, values)

    def _step(self, scheduler, metric: float | None = None) -> None:
        scheduler.optimizer.step()  # a no-op (no gradient); torch warns if a scheduler steps first
        if metric is None:
            scheduler.step()
        else:
            scheduler.step(metric)

    def epoch_tables(self, steps: int, device: torch.device) -> dict[str, torch.Tensor]:
        """For per-step schedules (empty otherwise): what each job's param group holds at each of
        the epoch's ``steps`` optimizer steps, ``{"lr": [steps, M], ...}`` (momentum or betas
        too when the scheduler moves them). The schedulers are left where the solo run's are
        after the epoch."""
        if not self.per_step:
            return {}
        rows = []
        for _ in range(steps):
            rows.append(self.current())
            for scheduler in self.schedulers:
                self._step(scheduler)
        tables = {
            key: torch.tensor([row[key] for row in rows], dtype=torch.float64, device=device) for key in self.keys
        }
        return {key: table for key, table in tables.items() if key == "lr" or bool((table != table[0]).any())}

    def end_epoch(self, val_acc: Sequence[float] | None = None) -> None:
        """Step per-epoch schedulers as the solo run does at epoch end (plateau: on val/acc)."""
        if self.per_step:
            return
        if self.plateau and val_acc is None:
            raise ValueError("ReduceLROnPlateau needs each job's val/acc at epoch end")
        for i, scheduler in enumerate(self.schedulers):
            self._step(scheduler, val_acc[i] if self.plateau else None)
