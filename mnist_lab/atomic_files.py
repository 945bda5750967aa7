"""Files written to a temporary name beside their target, then renamed onto it: a reader never
sees a half-written file, and an interrupted write leaves the old file (or none) in place."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: Path, exclusive: bool = False) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds, rename it onto ``path``.

    ``exclusive``: only if ``path`` does not exist yet (checked and written in one step, even
    when two processes race for it); raises FileExistsError if it does.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        if exclusive:
            os.link(tmp, path)
        else:
            os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_atomic(path: Path, data: bytes, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary name (see ``replaced_atomically``)."""
    with replaced_atomically(path, exclusive) as tmp:
        tmp.write_bytes(data)
