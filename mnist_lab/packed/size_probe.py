"""How many jobs to pack together: on a GPU, a short timing probe on the jobs themselves; on the
CPU, a size that follows from the count of a job's operations (below).

Whether packing pays depends on the machine, the net and the batch size (a big batch already
fills a CPU's cores; a tiny MLP on a GPU is all launch overhead), so the size is measured, not
guessed: time a few steps of one job alone, then of packs of growing size, and keep the size
that trains the most jobs per second, one job alone included. A pack is thus only chosen where
the probe found it faster than its jobs one after another, which leaves margin for the target
that no pack be more than 10 % slower (``SLACK``) when the probe's few steps misjudge.
``benchmarks/sweep.py`` runs the same comparison at length and reports the ratios.

On the CPU there is no probe: how many jobs a pack holds follows from the work of one job's
training step, its net's forward pass on one batch counted in floating-point operations
(``forward_flops``, torch's ``FlopCounterMode`` on the meta device: nothing is computed), by
``CPU_PACK_SIZES``. A pack's numbers differ from its jobs' solo numbers in the last bits
(docs/packed_sweeps.md), so a size that varies from run to run varies the results, and the
probe's few timed steps on a busy CPU did vary: for the same two jobs it picked 1 in one run and
2 in the next, and their test accuracies differed (issue 26: 0.8755 against 0.8773); a count of
operations is the same on every run and every machine. The bounds, though, are this project's
2-core CPU's, with torch's two threads (another CPU may gain from other sizes:
``benchmarks/sweep.py`` measures it, ``hydra.launcher.pack_size=N`` sets it). They were
measured at length (``benchmarks/sweep.py``, 16 seeds of a setting in packs of 2, 5, 8 and 16, docs/performance.md,
*Packed sweeps (CPU)*): the softmax regression and the MLPs to batch 256 (1 to 52 million
operations a job's step) trained fastest in packs of 16 (1.3x to 9.6x their one-by-one speed);
the small CNN at batch 16 and 32 (92 and 185 million) and ``mlp4_wide`` (135 million) in packs of
2 (1.0x to 1.7x; packs of 16: 0.8x to 1.8x); the CNN at batch 64 (1.5 billion) one by one (packs
of 2: 0.76-0.94x). On a GPU (not yet measured) the probe decides; there
``hydra.launcher.pack_size=<the size the launch line printed>`` repeats a sweep's packing.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterable, Iterator

import lightning as L
import torch
from hydra.utils import instantiate
from torch.utils.flop_counter import FlopCounterMode

from mnist_lab.cli.console import first_line
from mnist_lab.cli.out_of_memory import out_of_memory
from mnist_lab.data.datamodule import DeviceBatches, split_tensors
from mnist_lab.packed.pack import Pack
from mnist_lab.packed.packable import kept_rng
from mnist_lab.run.step_factory import make_step

SLACK = 1.1  # the target: a pack takes at most 10 % longer than its jobs one after another
SIZES = (2, 4, 8, 16, 32)  # the pack sizes the probe may try
PROBE_STEPS, PROBE_WARMUP = 20, 3  # timed steps per size tried, after these untimed ones
# On the CPU, (the most operations a job's forward step may take, the most jobs a pack then holds);
# a step above the last bound trains alone. Measured on this project's 2-core CPU (module docstring)
CPU_PACK_SIZES = ((75e6, 16), (500e6, 2))


def choose_pack_size(
    seconds_per_step: Callable[[int], float], sizes: Iterable[int], failures: list[str] | None = None
) -> int:
    """The pack size that trains the most jobs per second; 1 (no packing) if no pack beats one
    job alone. ``seconds_per_step(size)`` times one step of a pack of ``size`` jobs (``size=1``:
    one job alone, with the step its run takes). A size that fails, out of memory or any other
    way, ends the probe (larger ones would fail too) and the sizes timed before it stand; a
    failure other than memory is added to ``failures`` (a line saying what failed)."""
    best, best_rate = 1, 1 / seconds_per_step(1)
    for size in sizes:
        try:
            rate = size / seconds_per_step(size)
        except Exception as error:  # noqa: BLE001 - torch.OutOfMemoryError, or a pack that cannot be built
            if out_of_memory(error) is None and failures is not None:
                failures.append(f"a pack of {size} failed ({first_line(error)})")
            break
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
    tensors = split_tensors(cfg.data, device)
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
    job, ``cpu_pack_size`` (or the group, if smaller) on the CPU, else ``probe_pack_size`` (each
    saying why where it gives 1)."""
    if len(cfgs) == 1:
        return 1, "one job"
    if device.type == "cpu":
        size, how = cpu_pack_size(cfgs[0])
        return min(len(cfgs), size), how
    failures: list[str] = []
    size = probe_pack_size(cfgs, device, failures=failures)
    if size == 1:
        return 1, f"timing probe: {failures[0] if failures else 'one job alone was the fastest'}"
    return size, "timing probe"


def forward_flops(cfg) -> int:
    """The floating-point operations of the job's net's forward pass on one batch of
    ``cfg.data.batch_size`` images: counted on the meta device (no weights, nothing computed), or,
    for a net that needs real numbers there (a constructor that reads its weights), on a net built
    on the CPU and a batch of zeros. Building it draws no number a run sees."""
    batch = (int(cfg.data.batch_size), 1, 28, 28)
    with kept_rng():
        try:
            return _counted_forward(cfg, torch.device("meta"), batch)
        except Exception:  # noqa: BLE001 - a net that needs real numbers: count one built for real
            return _counted_forward(cfg, torch.device("cpu"), batch)


def _counted_forward(cfg, device: torch.device, batch: tuple[int, ...]) -> int:
    with torch.device(device):
        net, images = instantiate(cfg.model), torch.zeros(batch)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(images)
    return counter.get_total_flops()


def cpu_pack_size(cfg) -> tuple[int, str]:
    """On the CPU: the most jobs like ``cfg`` a pack holds (``CPU_PACK_SIZES``), and why; 1 (each
    job alone, as without packing) where its net's operations cannot be counted."""
    try:
        flops = forward_flops(cfg)
    except Exception as error:  # noqa: BLE001 - no count, no pack: each job alone, and why
        cause = error.__cause__ or error  # Hydra wraps a constructor's error: say the constructor's
        return 1, (
            f"on the CPU the operations of a job's step could not be counted ({first_line(cause)}), so each trains "
            "alone; hydra.launcher.pack_size=N packs them"
        )
    size = next((size for bound, size in CPU_PACK_SIZES if flops <= bound), 1)
    millions = flops / 1e6
    work = f"{millions:,.0f}" if millions >= 10 else f"{millions:.2g}"
    work = f"{work} million operations a job's forward step"
    if size == 1:
        return 1, f"on the CPU a pack of such jobs trains slower than they do one by one ({work})"
    return size, f"on the CPU: up to {size} jobs a pack, for {work}"


def probe_pack_size(
    cfgs,
    device: torch.device,
    sizes=SIZES,
    steps: int = PROBE_STEPS,
    warmup: int = PROBE_WARMUP,
    failures: list[str] | None = None,
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

    return choose_pack_size(seconds_per_step, sizes_to_probe(len(cfgs), sizes), failures)


def sizes_to_probe(jobs: int, sizes=SIZES) -> list[int]:
    """The pack sizes worth timing for a group of ``jobs``: ``sizes`` below it, and the whole
    group when it is no larger than the largest (5 seeds pack as one 5, not as 4 + 1)."""
    smaller = [s for s in sizes if s < jobs]
    return smaller + [jobs] if 1 < jobs <= max(sizes) else smaller
