"""Train one pack to the end and record each of its jobs as a solo run (``PackedJob``).

``pack_epochs`` is the pack's epoch loop, the one that sweeps run and tests drive. Per epoch, as a
solo run's epoch: the training steps (``Pack.train_epoch``, which freezes a job whose loss goes
bad), validation of every job, the schedules' epoch step. ``train_pack`` then writes the jobs'
history rows, step losses, scalars and checkpoints. The training and validation, timed once for
the pack, are each job's ``train_time_s``; the rest is each job's own ``bookkeeping_s``. A job frozen for divergence is
finished there (status "diverged", no test); the others train on. At the end each job tests its
best weights and writes its final record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from mnist_lab.cli import sweep_clock
from mnist_lab.cli.console import first_line
from mnist_lab.cli.out_of_memory import as_config_error
from mnist_lab.packed.job import PackedJob
from mnist_lab.packed.pack import Pack


@dataclass
class PackEpoch:
    """One finished epoch of a pack: per job (index ``i``) its steps' losses ``losses[:, i]`` (on the
    CPU; a frozen job's steps after its freeze included), correct predictions, validation loss and
    accuracy, and the lr its row records (before the epoch's scheduler step, as a solo row's)."""

    first_step: int  # optimizer steps done before this epoch
    losses: torch.Tensor  # [steps, M]
    correct: list[int]
    val_loss: list[float]
    val_acc: list[float]
    lr: list[float]
    time_s: float  # the training steps
    pack_time_s: float  # training and validation: each job's train_time_s


def pack_epochs(pack: Pack) -> Iterator[PackEpoch]:
    """Train ``pack`` epoch by epoch to its last step; yields each epoch after its schedules have
    stepped (where a solo run saves its checkpoints). Adds the training time to the sweep's clock."""
    while pack.steps_done < pack.total_steps:
        first_step = pack.steps_done
        started = time.perf_counter()
        losses, correct = pack.train_epoch()
        if pack.device.type == "cuda":
            torch.cuda.synchronize(pack.device)
        time_s = time.perf_counter() - started
        val_loss, val_acc = (t.tolist() for t in pack.evaluate(pack.val_x, pack.val_y))
        pack_time_s = time.perf_counter() - started
        sweep_clock.add("training", pack_time_s)
        lr = pack.schedules.current()["lr"]  # before the epoch's scheduler step, as the solo row
        losses, correct = losses.cpu(), correct.tolist()
        pack.end_epoch(val_acc if pack.schedules.plateau else None)  # before the checkpoints, as solo
        yield PackEpoch(first_step, losses, correct, val_loss, val_acc, lr, time_s, pack_time_s)


def train_pack(pack: Pack, jobs: dict[int, PackedJob]) -> dict[int, dict]:
    """Train ``pack``; ``jobs`` maps a job's index in the pack to its record (jobs whose folder
    was refused have none: they train along, unrecorded). Returns each job's final record.
    An error is recorded as every unfinished job's failure, then raised (running out of memory as
    the ``ConfigError`` that says what to lower); Ctrl-C or SIGTERM as their interruption."""
    results: dict[int, dict] = {}
    live = dict(jobs)
    try:
        for i, job in list(live.items()):
            try:
                job.start(pack)
            except Exception:  # noqa: BLE001 - recorded as its failure; the rest of the pack goes on
                results[i] = live.pop(i).record.data
        epochs, images = pack_epochs(pack), pack.batches.x.shape[0]
        while live and (epoch := next(epochs, None)) is not None:  # no epoch once every job is done
            for i, job in list(live.items()):
                steps = (pack.stopped_at[i] or pack.steps_done) - epoch.first_step
                stats = {
                    "correct": epoch.correct[i],
                    "images": min(steps * pack.batches.batch_size, images),
                    "val_loss": epoch.val_loss[i],
                    "val_acc": epoch.val_acc[i],
                    "lr": epoch.lr[i],
                    "time_s": epoch.time_s,
                    "pack_time_s": epoch.pack_time_s,
                }
                losses = epoch.losses[:steps, i]
                if not on_its_own(job, job.end_epoch, pack, pack.epoch - 1, epoch.first_step, losses, stats):
                    results[i] = live.pop(i).record.data
                elif pack.diverged_at[i] is not None:
                    results[i] = finish_alone(live.pop(i))
        for i in list(live):
            results[i] = finish_alone(live.pop(i))
    except KeyboardInterrupt as stop:
        for job in live.values():
            job.interrupt(stop)
        raise
    except Exception as error:
        error = as_config_error(error, pack.cfgs[0], pack.models)  # out of memory: what to lower
        for job in live.values():
            job.fail(error)
        raise error from None
    return results


def on_its_own(job: PackedJob, write: Callable, *args) -> bool:
    """Run ``write(*args)``, one of ``job``'s own steps (its records, checkpoints, test), and say
    whether it worked: an error there (its folder removed, say) fails that job alone, with the pack's
    other jobs training on, as their solo runs would."""
    try:
        write(*args)
    except Exception as error:  # noqa: BLE001 - one job's trouble stays that job's
        try:
            job.fail(error)
        except Exception:  # noqa: BLE001 - its record cannot be written either: the result says it
            job.record.data.update(status="failed", error=first_line(error))
        return False
    return True


def finish_alone(job: PackedJob) -> dict:
    """The job's final record (``PackedJob.finish``), or its failure (``on_its_own``)."""
    records: list[dict] = []
    on_its_own(job, lambda: records.append(job.finish()))  # noqa: B023 - called at once
    return records[0] if records else job.record.data
