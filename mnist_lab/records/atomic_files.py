"""Files written to a temporary name beside their target, then renamed onto it: a reader never
sees a half-written file, and an interrupted write leaves the old file (or none) in place."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def replaced_atomically(path: Path, exclusive: bool = False, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; when the block succeeds, rename it onto ``path``.

    ``exclusive``: only if ``path`` does not exist yet (checked and written in one step, even
    when two processes race for it); raises FileExistsError if it does. ``suffix`` of the temp
    name: ``path``'s own by default (writers such as matplotlib pick the format from it).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    # os.open with mode 0o666 (less the umask), not mkstemp's 0o600: the file keeps the usual
    # permissions after the rename, so others on a shared filesystem can read a sweep's results.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{suffix}")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
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
