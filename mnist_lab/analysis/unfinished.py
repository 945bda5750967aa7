"""The jobs of a sweep that did not finish, and the command that resumes them.

A job's ``metrics.json`` says ``interrupted`` when Ctrl-C or SIGTERM stopped it; it still says
``running`` when the job was stopped before it could write why: a full disk (a record that
cannot be written cannot say so), ``kill -9``, a machine that went down. Once its sweep has
ended, either is a job to resume, and the report says so (``unfinished_line``), with the
sweep's own command and ``ckpt_path=last``: a resumed sweep leaves finished jobs as they are.
"""

from __future__ import annotations

from pathlib import Path

from mnist_lab.cli.sweep_lock import running_sweep
from mnist_lab.records.sweep_dir import resume_command

UNFINISHED = ("running", "interrupted")


def unfinished_line(rows: list[dict], sweep_dir: Path) -> str | None:
    """One sentence naming the jobs whose record says ``running`` or ``interrupted``, with the
    command that resumes them; None if every job finished (ok, diverged or failed)."""
    stopped = [row for row in rows if row["status"] in UNFINISHED]
    if not stopped:
        return None
    jobs = ", ".join(f"{row['job']} ({row['status']})" for row in stopped)
    holder = running_sweep(sweep_dir)
    if holder is not None:
        return f"not finished yet: {jobs}; the sweep is still running ({holder})."
    return (
        f"not finished: {jobs}; a job still running after its sweep ended was stopped before it could "
        f"record why (a full disk, kill -9); once fixed, resume with: {resume_command(sweep_dir)}"
    )
