"""One reader of ``metrics.json`` (``records.metrics_file.read_record``), one behaviour: the report,
the claim of a run dir and a resumed sweep see the same record, or the same damage."""

from __future__ import annotations

import json

import pytest

from mnist_lab.records.metrics_file import RecordError, read_record, record_or_empty
from mnist_lab.records.run_dir import _status_of

GOOD = {"status": "ok", "best_val_acc": 0.91, "overrides": ["optimizer.lr=0.1"], "val_acc": [0.9, 0.91]}
DAMAGED = {
    "missing": (None, "no metrics.json: the job stopped before training started"),
    "not JSON": ("{not json", "is not valid JSON"),
    "not a record": ("[1, 2]", "not a run record"),
    "a field no run records": (json.dumps({"status": "ok", "best_val_acc": "high"}), 'best_val_acc="high"'),
    "a boolean for a number": (json.dumps({"status": "ok", "epochs": True}), "epochs=true"),
    "a status that is no word": (json.dumps({"status": 3}), "status=3"),
}


def test_a_record_reads_back_as_written(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(GOOD))
    assert read_record(path) == GOOD == record_or_empty(path)
    assert _status_of(path) == "ok"


@pytest.mark.parametrize("case", DAMAGED)
def test_every_reader_sees_the_same_damage(tmp_path, case):
    text, sentence = DAMAGED[case]
    path = tmp_path / "metrics.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(RecordError, match="delete it or rerun the job|stopped before training") as error:
        read_record(path)
    assert sentence in str(error.value)
    assert record_or_empty(path) == {}
    assert _status_of(path) == "unknown"  # the claim of a run dir: not a finished run's
