"""A sweep that ends before any job started leaves no ``multirun.yaml``.

Hydra's sweeper writes ``multirun.yaml`` into the sweep dir before it checks the jobs' overrides
and launches them, and a sweep dir that holds one refuses a new sweep (``sweep.SweepReport``).
So a sweep refused at start (``-m loss=hinge,ce``) or stopped while it was planned would make its
corrected command be refused too. ``SweepReport.on_multirun_start`` notes a fresh sweep's dir
here; ``forget_unstarted`` (called where such a command ends: ``hydra_errors``, the packed
launcher's planning) removes the file again while the dir holds nothing else (but the lock
file, ``cli.sweep_lock``, which goes with it).
"""

from __future__ import annotations

from pathlib import Path

MULTIRUN_FILE = "multirun.yaml"
LOCK_FILE = ".sweep.lock"  # cli.sweep_lock: held by the sweep running in the dir
HOLDER_FILE = ".sweep.holder"  # cli.sweep_lock: who holds it, for the sentence that refuses a second sweep
_fresh_sweep_dir: Path | None = None  # the dir of the sweep this command started, if it held no sweep


def note_fresh(sweep_dir: Path) -> None:
    global _fresh_sweep_dir
    _fresh_sweep_dir = sweep_dir


def forget_unstarted(beside_other_files: bool = False) -> None:
    """Remove the fresh sweep's ``multirun.yaml`` if no job has written anything beside it (or,
    ``beside_other_files``, where the caller knows that none of its jobs ran: the dir holds an
    earlier sweep's job folders)."""
    sweep_dir = _fresh_sweep_dir
    if sweep_dir is None or not sweep_dir.is_dir():
        return
    if {p.name for p in sweep_dir.iterdir()} <= {MULTIRUN_FILE, LOCK_FILE, HOLDER_FILE}:
        (sweep_dir / HOLDER_FILE).unlink(missing_ok=True)
        (sweep_dir / LOCK_FILE).unlink(missing_ok=True)  # this process's: it ends here
    if beside_other_files or {p.name for p in sweep_dir.iterdir()} <= {MULTIRUN_FILE}:
        (sweep_dir / MULTIRUN_FILE).unlink(missing_ok=True)
