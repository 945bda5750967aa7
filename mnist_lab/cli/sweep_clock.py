"""Where a sweep's time goes: the parts its last line names (``sweep.SweepReport``).

Each part is timed where it runs, in the process that launched the sweep, and added up here:

- ``start-up``: from the first import of mnist_lab to the sweep's start (the imports, Hydra);
- ``configs``: composing the jobs' configs (the sweeper's check and the launcher's plan);
- ``pack sizes``: the packed launcher's probe of the pack size (``packed.size_probe.pack_size``);
- ``data``: loading MNIST's arrays, moving them to the device and splitting them
  (``data.datamodule.split_tensors``: once per sweep, as every job of one split shares it; a data
  dir's first-ever download and parse, in a solo job's ``prepare_data``, counts with its records);
- ``pack checks``: building each pack and checking its step against each job's solo step
  (``packed.pack_run.built_pack``: the proof a pack gives before it is trusted);
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

PARTS = (
    *("start-up", "configs", "pack sizes", "data", "pack checks"),
    *("training", "evaluation", "records and images", "report"),
)
OPTIONAL = ("pack sizes", "data", "pack checks")  # named only where they took 0.1 s or more
SECONDS: Counter[str] = Counter()


def add(part: str, seconds: float) -> None:
    SECONDS[part] += seconds


@contextmanager
def timed(part: str) -> Iterator[None]:
    """Add to ``part`` the wall time of the ``with`` block less what the block added to the other
    parts: parts timed inside it (a job's training and evaluation inside the job, MNIST's first
    load inside a pack's check) are counted once, in their own part."""
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
    """``8.9 s (start-up 4.4 s, configs 0.3 s, data 0.4 s, ...)``: the time since mnist_lab's first import
    and its parts (the ``OPTIONAL`` ones and ``other`` only where they are 0.1 s or more)."""
    total = time.perf_counter() - STARTED
    shown = [p for p in PARTS if p not in OPTIONAL or SECONDS[p] >= 0.05]
    other = total - sum(SECONDS[p] for p in PARTS)
    parts = [f"{p} {SECONDS[p]:.1f} s" for p in shown] + ([f"other {other:.1f} s"] if other >= 0.05 else [])
    return f"{total:.1f} s ({', '.join(parts)})"
