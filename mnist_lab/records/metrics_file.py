"""``metrics.json``'s name and how it is written: atomically, as JSON without NaN.

Kept apart from ``run_record`` (a Lightning callback) so that what only reads or names run
records (``report``, ``hydra_errors``) starts without importing Lightning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from mnist_lab.records.atomic_files import write_atomic

METRICS_FILE = "metrics.json"


def write_json_atomic(path: Path, data: dict, exclusive: bool = False) -> bool:
    """Write through a temporary name. ``exclusive``: only if ``path`` does not exist yet
    (checked and written in one step); returns False if it did."""
    text = json.dumps(data, indent=2, allow_nan=False, default=str)
    try:
        write_atomic(path, text.encode(), exclusive=exclusive)
    except FileExistsError:
        return False
    return True


def finite_or_none(value):
    """JSON has no NaN: missing or non-finite numbers are written as null."""
    if isinstance(value, dict):
        return {key: finite_or_none(v) for key, v in value.items()}
    if isinstance(value, list):
        return [finite_or_none(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def first_line(exception: BaseException) -> str:
    """An error as metrics.json's ``error`` holds it: its type and its message's first line."""
    text = str(exception).strip().splitlines()
    return f"{type(exception).__name__}: {text[0] if text else ''}".rstrip(": ")
