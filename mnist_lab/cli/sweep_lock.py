"""One sweep at a time in a sweep dir: two resumes of a sweep at once would both train its
unfinished jobs into the same folders.

``hold`` takes ``<sweep dir>/.sweep.lock`` (``filelock``: an OS lock, which the kernel releases
when its process ends, so a sweep killed with -9 leaves nothing that blocks the next) and writes
beside it (``.sweep.holder``) who holds it, so that a second sweep into the dir is refused with a sentence that names
the running one. ``hydra/sweeper=compose_once`` takes it before it writes ``multirun.yaml``; the
lock is held until the sweep's report is written (``release``) or the process ends.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from filelock import FileLock, Timeout

from mnist_lab.cli.config_error import ConfigError
from mnist_lab.cli.sweep_start import HOLDER_FILE, LOCK_FILE

T = TypeVar("T")
_held: FileLock | None = None  # kept referenced: a collected FileLock would let go of the lock


def this_command() -> str:
    """The command line of this process, as it was started (``python -m mnist_lab.train -m …``)."""
    return shlex.join(["python", *sys.orig_argv[1:]])


def hold(sweep_dir: Path, check: Callable[[], T]) -> T:
    """Hold the sweep dir's lock for this process and return ``check()``, run while it is held (so
    no other sweep changes the dir between the check and the sweep); ``ConfigError`` (the holder
    named) if another process holds it. If ``check`` raises, the lock is let go and the dir left
    as it was (the lock file removed if this call made it)."""
    global _held
    path = Path(sweep_dir) / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    made = not path.exists()
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(
            f"another sweep is running in {sweep_dir} ({_holder(path)}); wait for it to end (or stop it), "
            "then run this command again."
        ) from None
    holder = path.with_name(HOLDER_FILE)
    before = holder.read_text(errors="replace") if holder.exists() else None  # a finished sweep's
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    # Named as soon as it holds the lock, so that a sweep refused during the check below names this
    # process, not the last one. The name goes in a file of its own, never into the lock file,
    # which filelock owns (its soft-lock fallback, where a filesystem has no flock, keeps its own
    # marker there).
    holder.write_text(f"pid {os.getpid()} on {socket.gethostname()}, started {started}: {this_command()}\n")
    try:
        checked = check()
    except BaseException:
        if before is None:  # a refused sweep leaves the dir as it found it (the lock still held)
            holder.unlink(missing_ok=True)
        else:
            holder.write_text(before)
        lock.release()
        if made:  # nobody waits on it (timeout 0)
            path.unlink(missing_ok=True)
        raise
    _held = lock
    return checked


def running_sweep(sweep_dir: Path) -> str | None:
    """Who runs a sweep in ``sweep_dir`` now (another process holds its lock), else None; never
    makes a lock file where there is none."""
    path = Path(sweep_dir) / LOCK_FILE
    # this process's own lock (its report, written while it holds it): a second descriptor would conflict
    if not path.exists() or (_held is not None and Path(_held.lock_file).resolve() == path.resolve()):
        return None
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        return _holder(path)
    lock.release()
    return None


def _holder(path: Path) -> str:
    holder_file = path.with_name(HOLDER_FILE)
    holder = holder_file.read_text(errors="replace").strip() if holder_file.exists() else ""
    return holder or "a process that has not written its name yet"


def release() -> None:
    """Let go of the lock ``hold`` took (the file stays: the next sweep locks the same inode)."""
    global _held
    if _held is not None:
        _held.release()
        _held = None
