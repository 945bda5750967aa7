"""A packed sweep's units: what one worker runs (a pack, or one job alone), and how a worker
process (a submitit job, a Ray task, one GPU's worker) runs one."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Protocol

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, setup_globals
from omegaconf import DictConfig, open_dict, read_write


@dataclass
class Unit:
    """A pack, or one job alone (``resume``: jobs of a resumed sweep, packed again where they run
    by the epoch their last.ckpt resumes at; a finished one is left as it is).
    ``jobs`` are the jobs' places in the sweep's ``job_overrides``, ``configs`` their composed
    configs and ``tasks`` what their task function gets (``configs`` without ``hydra``);
    ``reason``: why a job alone is not in a pack (None for a pack)."""

    jobs: list[int]
    configs: list[DictConfig]
    tasks: list[DictConfig]
    resume: bool = False
    reason: str | None = None

    def resumed(self) -> Unit:
        """The unit again with ``ckpt_path=last``, as a resumed sweep runs its jobs (a finished
        one is left as it is, the others resume from their last.ckpt, packed again): what a
        requeued submitit job runs."""
        configs, tasks = copy.deepcopy(self.configs), copy.deepcopy(self.tasks)
        for config in [*configs, *tasks]:
            with read_write(config), open_dict(config):
                config.ckpt_path = "last"
        return Unit(self.jobs, configs, tasks, resume=True, reason=self.reason)

    def __str__(self) -> str:
        return f"job{'s' if len(self.jobs) > 1 else ''} {', '.join(map(str, self.jobs))}"


def describe(units: list[Unit], where: str) -> str:
    """``Launching 3 jobs locally: 2 in 1 packs, 1 alone: <why>``: each reason jobs run alone
    named once (with its count of jobs where there are several reasons)."""
    packed = [len(unit.jobs) for unit in units if len(unit.jobs) > 1]
    jobs = sum(len(unit.jobs) for unit in units)
    line = f"Launching {jobs} jobs {where}: {sum(packed)} in {len(packed)} packs, {len(units) - len(packed)} alone"
    reasons: dict[str, int] = {}
    for unit in units:
        if len(unit.jobs) == 1:
            reason = unit.reason or "not said"
            reasons[reason] = reasons.get(reason, 0) + 1
    if len(reasons) == 1:
        return f"{line}: {next(iter(reasons))}"
    counted = "; ".join(f"{reason} [{n} job{'s' if n > 1 else ''}]" for reason, n in reasons.items())
    return f"{line}: {counted}" if reasons else line


class Launch(Protocol):
    """What runs a unit: ``packed_launcher.PackedLaunch``."""

    def run_unit(self, unit: Unit) -> dict[int, JobReturn]: ...


def run_unit_remote(launch: Launch, unit: Unit, singleton_state: dict) -> dict[int, JobReturn]:
    """One unit in a worker process, set up as hydra-submitit-launcher and hydra-ray-launcher set
    up a job in theirs: the sweep's Hydra state (``Singleton``) restored first. The line printed
    says which process ran which unit, and which GPU it saw."""
    Singleton.set_state(singleton_state)
    setup_globals()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    print(f"unit: {unit} in process {os.getpid()} (CUDA_VISIBLE_DEVICES={gpu})", flush=True)
    return launch.run_unit(unit)
