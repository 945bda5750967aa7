"""The jobs of a sweep that did not finish, and the command that resumes them.

A job's ``metrics.json`` says ``interrupted`` when Ctrl-C or SIGTERM stopped it; it still says
``running`` when the job was stopped before it could write why: a full disk (a record that
cannot be written cannot say so), ``kill -9``, a machine that went down. Once its sweep has
ended, either is a job to resume, and the report says so (``unfinished_line``), with the
sweep's own command and ``ckpt_path=last``: a resumed sweep leaves finished jobs as they are.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from omegaconf import OmegaConf

from mnist_lab.cli.hydra_errors import override_for_shell

UNFINISHED = ("running", "interrupted")
# Hydra's own overrides of the sweep that the resume command sets again, or must not repeat
NOT_REPEATED = ("hydra.sweep.dir=", "hydra.mode=")


def unfinished_line(rows: list[dict], sweep_dir: Path) -> str | None:
    """One sentence naming the jobs whose record says ``running`` or ``interrupted``, with the
    command that resumes them; None if every job finished (ok, diverged or failed)."""
    stopped = [row for row in rows if row["status"] in UNFINISHED]
    if not stopped:
        return None
    jobs = ", ".join(f"{row['job']} ({row['status']})" for row in stopped)
    return (
        f"not finished: {jobs}; a job still running after its sweep ended was stopped before it could "
        f"record why (a full disk, kill -9); once fixed, resume with: {resume_command(sweep_dir)}"
    )


def resume_command(sweep_dir: Path) -> str:
    """The sweep's command (its overrides, from ``multirun.yaml``) with its dir and ``ckpt_path=last``,
    quoted for the shell; "the same command, ..." when ``multirun.yaml`` cannot be read."""
    tail = f"{override_for_shell('hydra.sweep.dir', str(sweep_dir))} ckpt_path=last"
    try:
        overrides = OmegaConf.load(sweep_dir / "multirun.yaml").hydra.overrides
        hydra = [str(o) for o in overrides.hydra if not str(o).startswith(NOT_REPEATED)]
        task = [str(o) for o in overrides.task if not str(o).startswith("ckpt_path=")]
    except Exception:  # noqa: BLE001 - no multirun.yaml, or not Hydra's: the words still say what to do
        return f"the same command, {tail}"
    return f"{shlex.join(['python', '-m', 'mnist_lab.train', '-m', *hydra, *task])} {tail}"
