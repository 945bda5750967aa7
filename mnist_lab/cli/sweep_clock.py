"""Where a sweep's time goes: the parts its last line names (``sweep.SweepReport``).

Each part is timed where it runs, in the process that launched the sweep, and added up here:

- ``start-up``: from the first import of mnist_lab to the sweep's start (the imports, Hydra);
- ``configs``: composing the jobs' configs (the sweeper's check and the launcher's plan);
- ``pack sizes``: the packed launcher's probe of the pack size (``packed.size_probe.pack_size``);
- ``training``: the training and validation epochs (``train_time_s``), a pack's once for all
  its jobs;
- ``evaluation``: the tests of the best weights;
- ``records and images``: the rest of each job (its Trainer or pack slot, loggers, checkpoints,
  metrics.json, TensorBoard events and images);
- ``report``: the sweep's report (summary, figures).

Jobs that run in other processes (GPU workers, submitit, Ray) are not timed here: their time,
and anything else unnamed, shows as ``other``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from mnist_lab import STARTED

PARTS = ("start-up", "configs", "pack sizes", "training", "evaluation", "records and images", "report")
SECONDS: Counter[str] = Counter()


def add(part: str, seconds: float) -> None:
    SECONDS[part] += seconds


@contextmanager
def timed(part: str) -> Iterator[None]:
    """Add the wall time of the ``with`` block to ``part``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        SECONDS[part] += time.perf_counter() - started


@contextmanager
def rest_to(part: str) -> Iterator[None]:
    """Add to ``part`` the wall time of the ``with`` block less what the block added to the other
    parts (a job: its time less its training and evaluation)."""
    started, before = time.perf_counter(), sum(SECONDS.values())
    try:
        yield
    finally:
        SECONDS[part] += (time.perf_counter() - started) - (sum(SECONDS.values()) - before)


def start_sweep() -> None:
    """The sweep starts: what came before it is start-up; the other parts start from zero."""
    SECONDS.clear()
    SECONDS["start-up"] = time.perf_counter() - STARTED


def breakdown() -> str:
    """``14.2 s (start-up 7.9 s, configs 0.3 s, ...)``: the time since mnist_lab's first import
    and its parts (``pack sizes`` and ``other`` only where they are 0.1 s or more)."""
    total = time.perf_counter() - STARTED
    shown = [p for p in PARTS if p != "pack sizes" or SECONDS[p] >= 0.05]
    other = total - sum(SECONDS[p] for p in PARTS)
    parts = [f"{p} {SECONDS[p]:.1f} s" for p in shown] + ([f"other {other:.1f} s"] if other >= 0.05 else [])
    return f"{total:.1f} s ({', '.join(parts)})"
