"""How many jobs to pack together: a short timing probe on the jobs themselves.

Whether packing pays depends on the machine, the net and the batch size (a big batch already
fills a CPU's cores; a tiny MLP on a GPU is all launch overhead), so the size is measured, not
guessed: time a few steps of one job alone, then of packs of growing size, and keep the size
that trains the most jobs per second, one job alone included. A pack is thus only chosen where
the probe found it faster than its jobs one after another, which leaves margin for the target
that no pack be more than 10 % slower (``SLACK``) when the probe's few steps misjudge.
``benchmarks/sweep.py`` runs the same comparison at length and reports the ratios.

The probe is skipped where it cannot pay (``pack_size``): a group of one job has nothing to
pack, and a CPU group whose whole training is short (the probe's steps more than
``PROBE_SHARE`` of the job-steps the group trains) packs without it, in packs of up to
``UNPROBED_SIZE``. Such a probe costs about as much as the training it sizes: for groups of 2,
3 and 5 of the tests' jobs (MLP 784-128-10, Adam, batch 64, 80 steps a job) it took 0.3 to 1.2
times the time of the group's training steps, and picked size 1 once and 2 once for the same two
jobs (one run per group in one process, throwaway script, 2026-11-30, commit 77287c2, the 2-core
CPU VM of docs/performance.md while other work ran on it). A pack of up to 5 jobs on the CPU
trained at 0.92x to 2.5x the speed of its jobs one after another in every grid
docs/performance.md measured (*Packed sweeps*), so packing without the probe costs a short group
at most about 8 % of its short training where the probe would cost it more than 10 %.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator

import lightning as L
import torch
from hydra.utils import instantiate

from mnist_lab.config_checks import out_of_memory
from mnist_lab.data import DeviceBatches, device_tensors, split_indices, split_tensors
from mnist_lab.pack import Pack
from mnist_lab.step_factory import make_step

SLACK = 1.1  # the target: a pack takes at most 10 % longer than its jobs one after another
SIZES = (2, 4, 8, 16, 32)  # the pack sizes the probe may try
PROBE_STEPS, PROBE_WARMUP = 20, 3  # timed steps per size tried, after these untimed ones
PROBE_SHARE = 0.1  # a probe that would train more than this share of its group's job-steps is skipped
UNPROBED_SIZE = 5  # the largest pack measured for every grid of docs/performance.md (all >= 0.92x)


def choose_pack_size(seconds_per_step: Callable[[int], float], sizes: Iterable[int]) -> int:
    """The pack size that trains the most jobs per second; 1 (no packing) if no pack beats one
    job alone. ``seconds_per_step(size)`` times one step of a pack of ``size`` jobs (``size=1``:
    one job alone, with the step its run takes)."""
    best, best_rate = 1, 1 / seconds_per_step(1)
    for size in sizes:
        try:
            rate = size / seconds_per_step(size)
        except RuntimeError as error:  # torch.OutOfMemoryError is one
            if out_of_memory(error) is None:
                raise
            break  # a pack this big does not fit the device's memory; nor will larger ones
        if rate > best_rate:
            best, best_rate = size, rate
    return best


def probe_graph(cfg) -> str:
    """The ``step.cuda_graph`` a probe times with: "auto" for "on", so that a capture that fails
    (out of memory, say) is timed as what it falls back to instead of ending the sweep's planning
    (the job's own run then says why)."""
    return "off" if cfg.step.cuda_graph == "off" else "auto"


def quiet(message: str) -> None:
    """Where a probe's steps say why a graph is off: nowhere (the job's own run says it)."""


def solo_steps(cfg, device: torch.device) -> Iterator:
    """A job's training steps on its own batches, forever: its net, optimizer and step built as
    ``Classifier`` builds them (``step_factory.make_step``: on a GPU, the CUDA-graph step)."""
    L.seed_everything(cfg.seed, verbose=False)
    net, loss = instantiate(cfg.model).to(device), instantiate(cfg.loss)
    make_scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
    make_optimizer = instantiate(cfg.optimizer)
    step, _ = make_step(net, loss, make_optimizer, device, probe_graph(cfg), make_scheduler, say=quiet)
    data = cfg.data
    tensors = split_tensors(data.data_dir, device, data.get("normalize", True), data.val_size, data.split_seed)
    x, y = tensors["train_x"], tensors["train_y"]
    batches = DeviceBatches(x, y, cfg.data.batch_size, shuffle=True, seed=cfg.data.shuffle_seed)
    net.train()
    while True:
        for batch in batches:
            yield step(*batch)


def packed_steps(cfgs, device: torch.device) -> Iterator:
    """The pack's training steps on the jobs' own batches, forever."""
    pack = Pack(cfgs, device, cuda_graph=probe_graph(cfgs[0]), say=quiet)
    pack.net.train()
    while True:
        for x, y in pack.batches:
            yield pack.step(x, y)


def timed(steps: Iterator, count: int, warmup: int, device: torch.device) -> float:
    """Seconds for ``count`` steps after ``warmup`` steps (the device synchronized around them)."""
    for _ in range(warmup):
        next(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(count):
        next(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def pack_size(cfgs, device: torch.device) -> tuple[int, str]:
    """The pack size for a group of jobs that can share a pack, and how it was chosen: 1 for one
    job, ``UNPROBED_SIZE`` (or the group, if smaller) where the probe would not pay (module
    docstring), else ``probe_pack_size``."""
    if len(cfgs) == 1:
        return 1, "one job"
    if device.type == "cpu":
        probe = probe_job_steps(len(cfgs))
        train = len(cfgs) * training_steps(cfgs[0], device)
        if probe > PROBE_SHARE * train:
            return min(len(cfgs), UNPROBED_SIZE), f"no timing probe: it would train {probe} of {train} job-steps"
    return probe_pack_size(cfgs, device), "timing probe"


def probe_job_steps(jobs: int, sizes=SIZES) -> int:
    """The job-steps ``probe_pack_size`` trains for a group of ``jobs``: one job alone and each
    pack size it tries, ``PROBE_WARMUP + PROBE_STEPS`` steps each."""
    return (PROBE_WARMUP + PROBE_STEPS) * (1 + sum(sizes_to_probe(jobs, sizes)))


def training_steps(cfg, device: torch.device) -> int:
    """The training steps of one job of the group: its batches per epoch times its epochs (the
    data loaded as the pack loads it; once per process)."""
    tensors = device_tensors(cfg.data.data_dir, device, cfg.data.get("normalize", True))
    rows = len(split_indices(cfg.data.val_size, cfg.data.split_seed, len(tensors["train_x"]))[0])
    batches = rows // cfg.data.batch_size if cfg.data.get("drop_last") else -(-rows // cfg.data.batch_size)
    return batches * int(cfg.trainer.max_epochs)


def probe_pack_size(
    cfgs, device: torch.device, sizes=SIZES, steps: int = PROBE_STEPS, warmup: int = PROBE_WARMUP
) -> int:
    """``choose_pack_size`` timed on the first jobs of ``cfgs`` (jobs that can share a pack)."""

    def seconds_per_step(size: int) -> float:
        steps_iter = solo_steps(cfgs[0], device) if size == 1 else packed_steps(cfgs[:size], device)
        try:
            return timed(steps_iter, steps, warmup, device) / steps
        finally:
            # A pack refers to itself (its batch order reads its epoch), so only the collector
            # frees it, and with it its weights, data and graph memory, before the next size.
            steps_iter.close()
            gc.collect()

    return choose_pack_size(seconds_per_step, sizes_to_probe(len(cfgs), sizes))


def sizes_to_probe(jobs: int, sizes=SIZES) -> list[int]:
    """The pack sizes worth timing for a group of ``jobs``: ``sizes`` below it, and the whole
    group when it is no larger than the largest (5 seeds pack as one 5, not as 4 + 1)."""
    smaller = [s for s in sizes if s < jobs]
    return smaller + [jobs] if 1 < jobs <= max(sizes) else smaller
