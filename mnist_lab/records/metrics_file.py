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


class RecordError(ValueError):
    """A metrics.json that is missing, unreadable, or not a run record; the message says which."""


# What each field of a record must hold where it is there (the types run_record writes).
NUMBER, WHOLE = (int, float), int
FIELD_TYPES = {
    "status": str,
    "best_val_acc": NUMBER,
    "test_acc": NUMBER,
    "final_train_loss": NUMBER,
    "epochs": WHOLE,
    "train_time_s": NUMBER,
    "packed": WHOLE,
    "diverged_at_step": WHOLE,
    "error": str,
    "overrides": list,
    "val_acc": list,
}


def record_problem(metrics, path: Path) -> str | None:
    """Why ``metrics`` (a parsed metrics.json) is not a run record, in a sentence; None if it is."""
    if not isinstance(metrics, dict):
        return f"{path} holds {json.dumps(metrics)[:40]}, not a run record; delete it or rerun the job"
    for key, kind in FIELD_TYPES.items():
        value = metrics.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return (
                f"{path} has {key}={json.dumps(value)[:40]}, which is not what a run records; "
                "delete it or rerun the job"
            )
    items = [*metrics.get("overrides", []), *metrics.get("val_acc", [])]
    if not all(v is None or isinstance(v, (str, *NUMBER)) for v in items):
        return f"{path} has overrides or val_acc that are not plain values; delete it or rerun the job"
    return None


def read_record(path: Path) -> dict:
    """A run's ``metrics.json``, checked. The one reader of records: the report, the claim of a
    run dir, a resumed sweep and ``RunRecord`` all read them here; a ``RecordError`` (one
    sentence) if there is none, it is not JSON, or a field holds what no run records."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise RecordError(f"no {METRICS_FILE}: the job stopped before training started") from None
    except (OSError, UnicodeDecodeError) as error:
        raise RecordError(f"{path} cannot be read ({error}); delete it or rerun the job") from None
    try:
        metrics = json.loads(text)
    except json.JSONDecodeError as error:
        raise RecordError(f"{path} is not valid JSON ({error}); delete it or rerun the job") from None
    problem = record_problem(metrics, path)
    if problem:
        raise RecordError(problem)
    return metrics


def record_or_empty(path: Path) -> dict:
    """``read_record``'s record, or {} where there is none or it is damaged: for code that only
    asks what a run recorded so far (its status, when and where it trained)."""
    try:
        return read_record(path)
    except RecordError:
        return {}
