"""One pack of a packed sweep, run: built and proved (``packed.check``), resumed from its jobs'
last.ckpt in a resumed sweep, each job's folder claimed through Hydra's ``run_job`` (as
``launch.PackedLaunch`` runs a job alone), trained (``packed.training``), and each job's end said
as its solo run says it. A pack that cannot be built, proved or resumed here is no pack: its
jobs train alone, each told why."""

from __future__ import annotations

import gc
import math
import sys
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus
from omegaconf import DictConfig

from mnist_lab.cli import sweep_clock
from mnist_lab.cli.console import first_line, settings_line, summary_line
from mnist_lab.cli.exit_codes import EXIT_INTERRUPTED
from mnist_lab.cli.hydra_errors import override_for_shell
from mnist_lab.packed.check import check_pack
from mnist_lab.packed.groups import DEVICES
from mnist_lab.packed.job import PackedJob
from mnist_lab.packed.pack import Pack
from mnist_lab.packed.resume import last_checkpoint
from mnist_lab.packed.training import train_pack
from mnist_lab.packed.units import Unit


def job_dir(config: DictConfig) -> Path:
    """A job's folder (``hydra.sweep.dir``/``hydra.sweep.subdir``), from its composed config."""
    return Path(str(config.hydra.sweep.dir)) / str(config.hydra.sweep.subdir)


def pack_device(cfg: DictConfig) -> torch.device:
    """The device ``trainer.accelerator`` names (auto: the GPU when there is one)."""
    name = DEVICES[str(cfg.trainer.accelerator)]
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def built_pack(unit: Unit) -> tuple[Pack | None, list[dict | None], str | None]:
    """The unit's pack (in a resumed sweep, each job's last.ckpt loaded into its slice) and those
    checkpoints (None: the job starts afresh); or no pack, and why its jobs train alone."""
    checkpoints: list[dict | None] = [None] * len(unit.jobs)
    try:
        pack = Pack(unit.tasks, pack_device(unit.tasks[0]))
        differs = check_pack(pack)  # on copies: each job's step in the pack must be its solo step
    except Exception as error:  # noqa: BLE001 - what Pack refuses trains as it would unpacked
        return None, checkpoints, f"the pack could not be built ({first_line(error)})"
    if differs or not unit.resume:
        return (None if differs else pack), checkpoints, differs
    try:
        configs = zip(unit.configs, unit.tasks, strict=True)
        checkpoints = [last_checkpoint(task, job_dir(config)) for config, task in configs]
        pack.resume(checkpoints)
    except Exception as error:  # noqa: BLE001 - each job then resumes from its last.ckpt alone
        return None, [None] * len(unit.jobs), f"the pack could not resume its jobs' last.ckpt ({first_line(error)})"
    return pack, checkpoints, None


def run_pack(launch, unit: Unit) -> dict[int, JobReturn]:
    """The unit's jobs trained as one pack, or each alone where ``built_pack`` says why not
    (``launch``: the sweep's ``launch.PackedLaunch``, whose ``run_alone`` and ``each_alone`` run
    a job alone; not typed here, as launch imports this module)."""
    with sweep_clock.timed("pack checks"):
        pack, checkpoints, differs = built_pack(unit)
    if differs:
        pack = None  # it refers to itself (its batch order reads its epoch): the collector frees it
        gc.collect()
        return launch.each_alone(unit, differs)
    jobs: dict[int, PackedJob] = {}
    resumed = f", resuming after {pack.epoch} of {pack.epochs} epochs" if pack.epoch else ""

    def claim(k: int):
        def task(cfg: DictConfig) -> float | None:
            hydra_cfg = HydraConfig.get()
            job = PackedJob(
                cfg,
                Path(hydra_cfg.runtime.output_dir),
                list(hydra_cfg.overrides.task),
                Path(hydra_cfg.sweep.dir),
                k,
                checkpoints[k],
            )
            print(f"{settings_line(cfg)} (packed: {len(unit.jobs)} jobs{resumed})", flush=True)
            try:
                job.claim()
            except Exception as error:  # noqa: BLE001 - as train.main: one bad job must not end the sweep
                print(f"[failed] {first_line(error)}  run {job.run_dir}", file=sys.stderr)
                return math.nan
            jobs[k] = job
            return None

        return task

    configs = zip(unit.jobs, unit.configs, strict=True)
    returns = {i: launch.run_alone(config, claim(k)) for k, (i, config) in enumerate(configs)}
    results = trained(pack, jobs, Path(str(launch.config.hydra.sweep.dir)))
    for k, i in enumerate(unit.jobs):
        if k in results:
            best = results[k].get("best_val_acc")
            failed = results[k].get("status") == "failed"  # as train.main: a failed job scores NaN
            returns[i].return_value = best if best is not None and not failed else math.nan
            returns[i].status = JobStatus.COMPLETED
    return returns


def trained(pack: Pack, jobs: dict[int, PackedJob], sweep_dir: Path) -> dict[int, dict]:
    """Each job's final record; an error fails the pack's jobs, not the sweep (as train.main)."""
    try:
        results = train_pack(pack, jobs)
    except KeyboardInterrupt:
        for job in jobs.values():  # as train.main prints each interrupted job
            print(summary_line(job.record.data))
        print(
            f"interrupted: {len(jobs)} packed jobs recorded as interrupted; resume with: the same command, "
            f"{override_for_shell('hydra.sweep.dir', str(sweep_dir))} ckpt_path=last",
            file=sys.stderr,
        )
        stopped_by = next((job.record.data.get("stopped_by") for job in jobs.values()), "SIGINT")
        sys.exit(EXIT_INTERRUPTED.get(stopped_by, 130))
    except Exception as error:  # noqa: BLE001 - recorded in every job's metrics.json
        for job in jobs.values():
            if job.record.data.get("status") == "failed":  # not a job that had diverged before
                print(f"[failed] {first_line(error)}  run {job.run_dir}", file=sys.stderr)
        return {k: job.record.data for k, job in jobs.items()}
    for job in jobs.values():
        if job.record.data.get("status") == "failed":  # its own trouble (packed.training.on_its_own)
            print(f"[failed] {job.record.data.get('error')}  run {job.run_dir}", file=sys.stderr)
        else:
            print(summary_line(job.record.data))
    return results
