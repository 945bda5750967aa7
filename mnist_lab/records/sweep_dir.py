"""Whose a sweep dir is: a sweep writes into a dir that holds a sweep only to resume that sweep.

Hydra's sweeper writes ``multirun.yaml``, and its launcher makes each job's folder (named by the
job's number and overrides), without a look at what the dir holds: a resume with a changed grid
added a second ``1_`` folder and a report of both grids, and a resume into another sweep's dir
overwrote its ``multirun.yaml``. ``jobs_for`` is called by ``hydra/sweeper=compose_once`` with the
command's jobs, before anything is written, and compares them with what the dir stores:

- ``multirun.yaml``'s ``hydra.sweeper.params`` and ``hydra.overrides.task``, expanded as Hydra's
  BasicSweeper expands them: the dir's grid, which a resume must make again;
- each job folder's ``.hydra/overrides.yaml`` (``<n>_…``): the dir's job n, which must be a job
  of the resume. The resume's jobs are numbered so that it is job n again: the same command with
  its overrides in another order (which Hydra numbers in another order) resumes the same jobs.

A job is the set of its overrides but those that leave it what it is (``NOT_THE_JOB``: a resume
adds ``ckpt_path=last``, and may read MNIST from another ``data.data_dir``). A fresh sweep (no
``ckpt_path=last``) into a dir that holds job folders with a record is refused too (a dir that
holds ``multirun.yaml`` is refused earlier, by ``analysis.sweep.SweepReport.on_multirun_start``).
"""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from mnist_lab.cli.config_error import ConfigError
from mnist_lab.cli.console import first_line
from mnist_lab.cli.hydra_errors import override_for_shell
from mnist_lab.cli.sweep_start import MULTIRUN_FILE
from mnist_lab.records.metrics_file import METRICS_FILE, record_or_empty

# Overrides that leave a job what it is: the resume itself, where the MNIST files are read from
# (their checksums are checked), the trackers it also logs to, what it prints.
NOT_THE_JOB = ("ckpt_path", "data.data_dir", "logger", "print_config")
JOB_FOLDER = re.compile(r"(\d+)(?:_|$)")  # analysis.sweep.job_dirname: 3_optimizer.lr=0.1, or 3


def job_of(overrides) -> list[str]:
    """A job's overrides without those that leave it what it is."""
    return [o for o in overrides if not leaves_the_job(o.split("=", 1)[0].lstrip("+~"))]


def leaves_the_job(key: str) -> bool:
    return any(key == other or key.startswith(f"{other}.") for other in NOT_THE_JOB)


def expand(arguments: list[str], config_loader) -> list[list[str]]:
    """Every job's overrides, in the order Hydra's BasicSweeper numbers them."""
    overrides = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    return BasicSweeper.split_arguments(overrides, None)[0]


def jobs_for(sweep_dir: Path, jobs: list[list[str]], resume: bool, config_loader) -> list[list[str]]:
    """``jobs`` (the command's, in Hydra's order), ordered so that each job folder of the dir gets
    its number again; ``ConfigError``, with nothing written, if the dir holds another sweep."""
    if not sweep_dir.is_dir():
        return jobs
    started = started_jobs(sweep_dir)
    if not resume:
        earlier = [(name, job) for _, name, job in started if (sweep_dir / name / METRICS_FILE).exists()]
        if earlier:
            mine = {frozenset(job_of(j)) for j in jobs}
            ours = all(job is not None and frozenset(job) in mine for _, job in earlier)
            raise ConfigError(
                f"{sweep_dir} holds job folders of an earlier sweep ({earlier[0][0]} holds a run) but no "
                "multirun.yaml; give this sweep its own hydra.sweep.dir"
                + (", or add ckpt_path=last to resume those jobs." if ours else ".")
            )
        return jobs
    if (sweep_dir / MULTIRUN_FILE).is_file():
        try:
            stored = OmegaConf.load(sweep_dir / MULTIRUN_FILE)
            params = stored.hydra.sweeper.get("params") or {}
            arguments = [f"{key}={value}" for key, value in params.items()] + list(stored.hydra.overrides.task)
            grid = [job_of(job) for job in expand(arguments, config_loader)]
        except Exception as error:  # noqa: BLE001 - e.g. an Optuna study's multirun.yaml: no grid to compare
            raise ConfigError(
                f"{sweep_dir} holds a sweep whose grid cannot be read from its multirun.yaml "
                f"({first_line(error)}); give this sweep its own hydra.sweep.dir."
            ) from None
        mine = [job_of(job) for job in jobs]
        if Counter(map(frozenset, grid)) != Counter(map(frozenset, mine)):
            raise ConfigError(
                f"{sweep_dir} holds another sweep ({difference(grid, mine)}); give this sweep its own "
                f"hydra.sweep.dir, or resume that one with its command: {resume_command(sweep_dir, stored)}"
            )
    return numbered(jobs, started, sweep_dir)


def started_jobs(sweep_dir: Path) -> list[tuple[int, str, list[str] | None]]:
    """(number, folder name, overrides) of each job folder that holds a record or its
    ``.hydra/overrides.yaml`` (the overrides from there, else from the record; None if neither says)."""
    found = []
    for folder in sweep_dir.iterdir():
        number = JOB_FOLDER.match(folder.name)
        overrides, record = folder / ".hydra" / "overrides.yaml", folder / METRICS_FILE
        if not number or not (overrides.is_file() or record.is_file()):
            continue
        listed = _listed_overrides(overrides) if overrides.is_file() else None
        if listed is None and record.is_file():
            listed = record_or_empty(record).get("overrides")
        if not isinstance(listed, list) and overrides.is_file():  # damaged (a full disk): no way to tell its job
            raise ConfigError(
                f"{sweep_dir} holds the job folder {folder.name}, whose .hydra/overrides.yaml cannot be read and "
                "whose record names no overrides; move that folder out of it, then run this command again."
            )
        found.append((int(number.group(1)), folder.name, job_of(listed) if isinstance(listed, list) else None))
    return sorted(found, key=lambda job: (job[0], job[1]))


def _listed_overrides(path: Path) -> list | None:
    """A job folder's ``.hydra/overrides.yaml`` as a list, or None if it is not one (cut short, empty)."""
    try:
        listed = OmegaConf.to_container(OmegaConf.load(path))
    except Exception:  # noqa: BLE001 - any YAML error: the record may still say
        return None
    return listed if isinstance(listed, list) else None


def numbered(
    jobs: list[list[str]], started: list[tuple[int, str, list[str] | None]], sweep_dir: Path
) -> list[list[str]]:
    """``jobs`` with the job of each folder ``<n>_…`` at place n, the others in their order."""
    unplaced = list(range(len(jobs)))
    places: list[int | None] = [None] * len(jobs)
    folder_of: dict[int, str] = {}  # job -> the folder it was placed by
    by_overrides: dict[frozenset, list[int]] = {}  # each job's overrides, made once
    for k, job in enumerate(jobs):
        by_overrides.setdefault(frozenset(job_of(job)), []).append(k)
    for number, name, overrides in started:
        same = [] if overrides is None else by_overrides.get(frozenset(overrides), [])
        match = next((k for k in same if k in unplaced), None)
        if match is None and same:
            raise ConfigError(
                f"{sweep_dir} holds two folders of one job ({folder_of[same[0]]} and {name}); remove the one you "
                "do not want to keep, then run this command again."
            )
        if match is None:
            raise ConfigError(
                f"{sweep_dir} holds the job folder {name} ({' '.join(overrides or []) or 'its overrides unknown'}), "
                "which is not a job of this command; give this sweep its own hydra.sweep.dir, or resume that sweep "
                "with its own command (its jobs' overrides are in their folders' .hydra/overrides.yaml)."
            )
        if number < len(jobs) and places[number] is not None:
            raise ConfigError(
                f"{sweep_dir} holds two folders numbered {number} ({folder_of[places[number]]} and {name}), of "
                "different jobs; move one of them out of it, then run this command again."
            )
        if number >= len(jobs):
            raise ConfigError(
                f"{sweep_dir} holds the job folder {name}, whose number does not fit this command's jobs (of "
                f"{len(jobs)} jobs); give this sweep its own hydra.sweep.dir, or move that folder out of it."
            )
        places[number] = match
        folder_of[match] = name
        unplaced.remove(match)
    rest = iter(unplaced)
    return [jobs[k if k is not None else next(rest)] for k in places]


def difference(grid: list[list[str]], mine: list[list[str]]) -> str:
    """How the dir's grid and the command's differ, key by key: ``optimizer.lr is 0.001,0.01
    there and 0.001,0.1 here``."""
    there, here = values_by_key(grid), values_by_key(mine)
    words = []
    for key in dict.fromkeys([*there, *here]):
        old, new = there.get(key, []), here.get(key, [])
        if set(old) != set(new):
            words.append(f"{key} is {','.join(old) or 'not set'} there and {','.join(new) or 'not set'} here")
    return "; ".join(words) or f"{len(grid)} jobs there and {len(mine)} here"


def values_by_key(jobs: list[list[str]]) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for job in jobs:
        for override in job:
            key, _, value = override.partition("=")
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return values


def resume_command(sweep_dir: Path, stored=None) -> str:
    """The command that resumes the sweep whose ``multirun.yaml`` is ``stored`` (read from
    ``sweep_dir`` if not given): its overrides as typed, its dir and ``ckpt_path=last``, quoted for
    the shell; "the same command, ..." when ``multirun.yaml`` cannot be read."""
    tail = f"{override_for_shell('hydra.sweep.dir', str(sweep_dir))} ckpt_path=last"
    try:
        stored = stored if stored is not None else OmegaConf.load(Path(sweep_dir) / MULTIRUN_FILE)
        overrides = stored.hydra.overrides
        task = [str(o) for o in overrides.task if not str(o).startswith("ckpt_path=")]
        hydra = [str(o) for o in overrides.hydra if not str(o).startswith(("hydra.sweep.dir=", "hydra.mode="))]
    except Exception:  # noqa: BLE001 - no multirun.yaml, or not Hydra's: the words still say what to do
        return f"the same command, {tail}"
    return f"{shlex.join(['python', '-m', 'mnist_lab.train', '-m', *task, *hydra])} {tail}"  # sweeps are train's
