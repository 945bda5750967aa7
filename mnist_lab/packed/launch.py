"""``hydra/launcher=packed``: a sweep's jobs that share a network shape train together, as packs.

Like Hydra's BasicLauncher (``hydra/_internal/core_plugins/basic_launcher.py``), it composes
every job's config with ``config_loader.load_sweep_config``, gives each its number, and sets each
job up with Hydra's own ``run_job`` (its folder, ``HydraConfig``, job logging and callbacks).
Then, unlike it, it splits the jobs into packs (``packed.groups``: what must match, and what a
pack cannot do) and trains each pack as one model on one device (``packed.pack_run``); each
packed job is recorded as its solo run (``packed.job``). A job that cannot pack, a pack's
remainder of one, and the jobs of a pack that ``Pack`` refuses run through ``run_job`` with the
task function, exactly as with the basic launcher. A pack, or a job alone, is a unit
(``packed.units``): ``plan`` makes them, ``run_unit`` runs one, here, in one GPU's worker
process (``gpu_workers``), or in a submitit job or Ray task (the launchers of
``hydra_plugins/mnist_lab_packed_launcher/packed_submitit.py`` and ``packed_ray.py``).

For a packed job, ``run_job`` runs a task function that claims its folder and writes
``.hydra/`` (as ``run.experiment.run`` does first); its training comes after, with its pack, and its
``JobReturn`` gets the result then. Hydra's ``on_job_end`` callbacks therefore see a packed job
before it has trained (this project's ``SweepReport`` reads the jobs at ``on_multirun_end``).

A resumed sweep (``ckpt_path=last``) leaves its finished jobs as they are (``_resume``) and packs
the others by the epoch they resume at: each job's last.ckpt is loaded into its slice of the pack
(``packed.resume``); a job with no last.ckpt starts afresh, with the jobs that never started
(docs/packed_sweeps.md, *Resuming a killed packed sweep*).
"""

from __future__ import annotations

import copy
import logging
import math
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict, read_write

from mnist_lab.cli import sweep_clock
from mnist_lab.cli.config_error import ConfigError
from mnist_lab.cli.console import first_line, settings_line, summary_line
from mnist_lab.cli.exit_codes import EXIT_INTERRUPTED, Terminated, raise_terminated
from mnist_lab.cli.hydra_errors import override_for_shell
from mnist_lab.cli.sweep_start import forget_unstarted
from mnist_lab.packed.gpu_workers import run_on_gpus, visible_gpus
from mnist_lab.packed.groups import DEVICES, split_into_packs, why_solo
from mnist_lab.packed.pack_run import job_dir, pack_device, run_pack
from mnist_lab.packed.resume import FINISHED, start_of
from mnist_lab.packed.size_probe import pack_size
from mnist_lab.packed.units import Unit, describe
from mnist_lab.records.metrics_file import METRICS_FILE, record_or_empty

log = logging.getLogger(__name__)


class PackedLaunch:
    """What ``hydra/launcher=packed`` does (``hydra_plugins/mnist_lab_packed_launcher``, the
    Launcher Hydra instantiates, hands its settings and ``launch`` calls here): ``plan`` splits
    the sweep into units, ``run_unit`` runs one. Picklable: the GPU workers and the submitit
    and Ray launchers get it with a unit and call ``packed.units.run_unit_remote``."""

    def __init__(
        self,
        pack_size: int | str,
        hydra_context: HydraContext,
        task_function: TaskFunction,
        config: DictConfig,
        gpus: int | str = 1,
    ):
        self.pack_size, self.hydra_context, self.task_function, self.config = (
            pack_size,
            hydra_context,
            task_function,
            config,
        )
        self.gpus = gpus

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        """The sweep's units run in this process, or spread over this machine's GPUs."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, raise_terminated)  # as train.main: SIGTERM is handled like Ctrl-C
        try:
            units = self.plan(job_overrides, initial_job_idx)
        except BaseException as stop:  # noqa: BLE001 - re-raised, or the interruption said in words
            forget_unstarted(beside_other_files=True)  # none of its jobs ran: the same command is no second sweep
            if isinstance(stop, ConfigError):
                print(f"error: {stop}", file=sys.stderr)
                sys.exit(1)
            if not isinstance(stop, KeyboardInterrupt):
                raise
            name = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
            print(
                f"interrupted ({'SIGTERM' if name == 'SIGTERM' else 'Ctrl-C'}) while the sweep was planned, "
                "before any job started; run the same command again.",
                file=sys.stderr,
            )
            sys.exit(EXIT_INTERRUPTED[name])
        gpus = self.gpus_for(units)
        if len(gpus) > 1 and len(units) > 1:
            log.info(describe(units, f"on {len(gpus)} GPUs ({', '.join(gpus)})"))
            try:
                return self.gather(units, run_on_gpus(self, units, gpus, Singleton.get_state()))
            except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the workers recorded their running jobs
                print(
                    "interrupted: the running jobs are recorded as interrupted; resume with: the same command, "
                    f"{override_for_shell('hydra.sweep.dir', str(self.config.hydra.sweep.dir))} ckpt_path=last",
                    file=sys.stderr,
                )
                sys.exit(EXIT_INTERRUPTED["SIGTERM" if isinstance(stop, Terminated) else "SIGINT"])
        log.info(describe(units, "locally"))  # in this process, one unit after another
        return self.gather(units, [self.run_unit(unit) for unit in units])

    def gpus_for(self, units: list[Unit]) -> list[str]:
        """The GPUs to spread the units over (``gpu_workers.visible_gpus``): none if a job uses
        several devices (a worker sees one GPU), and with ``gpus=auto`` none unless every job runs
        on a GPU (a CPU sweep stays in this process; a number spreads it anyway)."""
        tasks = [task for unit in units for task in unit.tasks]
        if any(str(task.trainer.get("devices")) != "1" for task in tasks):
            return []
        on_gpu = [DEVICES.get(str(task.trainer.get("accelerator")), "other") for task in tasks]
        if self.gpus == "auto" and not all(d == "cuda" or (d == "auto" and torch.cuda.is_available()) for d in on_gpu):
            return []
        return visible_gpus(self.gpus)

    def plan(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Unit]:
        """Every job's config composed, as BasicLauncher composes it, and the jobs split into units
        (a pack's size probed here, on this machine, when ``pack_size`` is auto)."""
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        with sweep_clock.timed("configs"):
            configs = [self._compose(initial_job_idx + n, overrides) for n, overrides in enumerate(job_overrides)]
            tasks = [self._task_config(config) for config in configs]
        resume = any(
            task.get("ckpt_path") == "last" for task in tasks
        )  # the sweeper checked the dir (records.sweep_dir)
        return self._split(Unit(list(range(len(configs))), configs, tasks, resume), self._pack_size)

    def _split(self, unit: Unit, pack_size) -> list[Unit]:
        """``unit``'s jobs (a sweep's, or a unit's that runs again) split into packs and jobs alone
        (``packed.groups.split_into_packs``); in a resumed sweep, by the epoch each job starts at."""
        starts = [start_of(task, job_dir(config)) for config, task in zip(unit.configs, unit.tasks, strict=True)]
        reasons: dict[int, str] = {}
        return [
            Unit(
                [unit.jobs[k] for k in members],
                [unit.configs[k] for k in members],
                [unit.tasks[k] for k in members],
                resume=unit.resume,
                reason=reasons.get(members[0]) if len(members) == 1 else None,
            )
            for members in split_into_packs(unit.tasks, pack_size, starts if unit.resume else None, reasons)
        ]

    @staticmethod
    def gather(units: list[Unit], results: Sequence[dict[int, JobReturn]]) -> list[JobReturn]:
        """The units' job returns in the sweep's order."""
        returns = {i: ret for result in results for i, ret in result.items()}
        return [returns[i] for i in sorted(i for unit in units for i in unit.jobs)]

    def run_unit(self, unit: Unit) -> dict[int, JobReturn]:
        """One unit's jobs trained and recorded: {job's place in the sweep: its JobReturn}. A pack
        whose jobs cannot pack here (on a machine that is not the one that planned it, e.g. one
        with a GPU) trains its jobs one by one. A unit whose jobs have records already is one run
        again (a Ray task retried after its worker died, a requeued submitit job): its jobs
        resume, as in a resumed sweep, packed by the epoch they resume at."""
        if not unit.resume and any((job_dir(config) / METRICS_FILE).exists() for config in unit.configs):
            log.info(f"{unit} ran before: resumed")
            unit = unit.resumed()
        if unit.resume and len(unit.jobs) > 1:  # where its jobs stand now (they may have moved apart)
            parts = self._split(unit, len(unit.jobs))
            if len(parts) > 1:
                return {i: ret for part in parts for i, ret in self._run(part).items()}
        return self._run(unit)

    def _run(self, unit: Unit) -> dict[int, JobReturn]:
        if len(unit.jobs) == 1:
            return self.each_alone(unit)
        reason = why_solo(unit.tasks[0])
        if reason is not None:
            return self.each_alone(unit, reason)
        return run_pack(self, unit)

    def _compose(self, idx: int, overrides: Sequence[str]) -> DictConfig:
        """The job's whole config, as BasicLauncher composes it."""
        sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = idx
            sweep_config.hydra.job.num = idx
        return sweep_config

    @staticmethod
    def _task_config(sweep_config: DictConfig) -> DictConfig:
        """The job's config without the ``hydra`` node: what its task function gets."""
        task = copy.deepcopy(sweep_config)
        with read_write(task), open_dict(task):
            del task["hydra"]
        return task

    def _pack_size(self, cfgs: list[DictConfig]) -> tuple[int, str]:
        """The pack size for a group of jobs, and why it is 1 where it is. A probe that fails
        (on a GPU, a pack it cannot build or time) leaves the group's jobs alone: it never ends the sweep."""
        if self.pack_size != "auto":
            return int(self.pack_size), f"hydra.launcher.pack_size={self.pack_size}"
        try:
            with sweep_clock.timed("pack sizes"):
                size, how = pack_size(cfgs, pack_device(cfgs[0]))
        except Exception as error:  # noqa: BLE001 - the jobs then run as they would unpacked, and say why
            size, how = (
                1,
                (
                    f"their pack size could not be chosen ({first_line(error)}), so each trains alone; "
                    "hydra.launcher.pack_size=N packs them"
                ),
            )
        if len(cfgs) > 1:
            log.info(f"pack size {size} for {len(cfgs)} jobs of {settings_line(cfgs[0])} ({how})")
        return size, how

    def run_alone(self, config: DictConfig, task_function: TaskFunction | None = None) -> JobReturn:
        """The job through Hydra's ``run_job``, as BasicLauncher runs it (with the sweep's task
        function, or ``task_function``), announced as BasicLauncher announces it."""
        log.info(f"\t#{config.hydra.job.num} : {' '.join(filter_overrides(config.hydra.overrides.task))}")
        with sweep_clock.timed("records and images"):  # Hydra's set-up of the job, around its own parts
            ret = run_job(
                hydra_context=self.hydra_context,
                task_function=task_function or self.task_function,
                config=config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret

    def each_alone(self, unit: Unit, reason: str | None = None) -> dict[int, JobReturn]:
        """The unit's jobs one by one, each as ``run_alone`` runs a job (in a resumed sweep, as
        ``_resume`` resumes it); where a pack was planned for them, each says why it trains
        alone (``reason``)."""
        task_function = self._resume if unit.resume else None
        returns = {}
        for i, config in zip(unit.jobs, unit.configs, strict=True):
            if reason is not None:
                log.info(f"job {config.hydra.job.num} trains alone: {reason}")
            returns[i] = self.run_alone(config, task_function)
        return returns

    def _resume(self, cfg: DictConfig) -> float | None:
        """A job of a resumed sweep that runs alone: a finished one (status ok or diverged) is
        left exactly as it is (its record, checkpoints and events); another resumes from its
        last.ckpt, a packed job's too (it holds its solo run's full state), through the sweep's
        task function."""
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        record = record_or_empty(run_dir / METRICS_FILE)
        if record.get("status") not in FINISHED:
            return self.task_function(cfg)
        print(f"{summary_line(record)} (finished: left as it was)", flush=True)
        best = record.get("best_val_acc")
        return best if isinstance(best, float) else math.nan
