"""Every step's loss, appended to and read from TensorBoard's event files by ``tracking.event_files``:
the events ``add_scalar`` writes, and what tensorboard's own EventAccumulator reads (across a
resumed run's files, up to a cut-short or damaged record)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.proto.event_pb2 import Event
from torch.utils.tensorboard import SummaryWriter

from mnist_lab.tracking import event_files


def accumulated(events_dir: Path, tag: str) -> list[tuple[float, int, float]]:
    events = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
    events.Reload()
    return [(e.wall_time, e.step, e.value) for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def read(events_dir: Path, tag: str) -> list[tuple[float, int, float]]:
    return [tuple(e) for e in event_files.scalars(events_dir, tag)]


def write_run(events_dir: Path, steps: range, seed: int) -> Path:
    """One writer's file: losses at ``steps``, another scalar, an image, a tensor-style scalar."""
    rng = np.random.default_rng(seed)
    writer = SummaryWriter(str(events_dir))
    for step in steps:
        writer.add_scalar("train/loss", float(rng.random()), step)
    writer.add_scalar("val/acc", 0.5, steps[-1])
    writer.add_image("val/misclassified", rng.random((3, 28, 28)), steps[-1])
    writer.add_scalar("train/loss_tensor", 1.0, steps[-1], new_style=True)
    writer.close()
    return max(events_dir.glob("*tfevents*"), key=lambda p: p.stat().st_mtime_ns)


@pytest.fixture
def resumed_run(tmp_path) -> Path:
    """Two files, as a run that was killed and resumed writes them: the second redoes steps 5-9."""
    events_dir = tmp_path / "tensorboard"
    write_run(events_dir, range(10), seed=0)
    time.sleep(1.1)  # the second file's name (its opening second) sorts after the first's
    write_run(events_dir, range(5, 15), seed=1)
    assert len(event_files.event_files(events_dir)) == 2
    return events_dir


def test_a_runs_losses_are_tensorboards(tensorboard_run):
    events_dir = tensorboard_run / "tensorboard"
    ours = read(events_dir, "train/loss")
    assert ours and ours == accumulated(events_dir, "train/loss")


def test_a_resumed_runs_files_are_read_in_order(resumed_run):
    ours = read(resumed_run, "train/loss")
    assert [step for _, step, _ in ours] == [*range(10), *range(5, 15)]
    assert ours == accumulated(resumed_run, "train/loss")
    assert read(resumed_run, "val/acc") == accumulated(resumed_run, "val/acc")
    assert read(resumed_run, "train/loss_tensor") == [], "EventAccumulator's Scalars leaves tensor-style scalars out"


@pytest.mark.parametrize("damage", ["cut short", "checksum"])
def test_a_file_is_read_up_to_its_first_bad_record(resumed_run, damage):
    first = event_files.event_files(resumed_run)[0]
    data = bytearray(first.read_bytes())
    if damage == "cut short":  # a run killed while writing its last record
        data = data[:-30]
    else:  # a byte of the 4th record's event flipped
        at = 0
        for _ in range(3):
            at += 12 + int.from_bytes(data[at : at + 8], "little") + 4
        data[at + 14] ^= 0xFF
    first.write_bytes(bytes(data))
    ours = read(resumed_run, "train/loss")
    assert ours == accumulated(resumed_run, "train/loss")
    first_file = [0, 1] if damage == "checksum" else list(range(10))  # what comes before the bad record
    assert [step for _, step, _ in ours] == [*first_file, *range(5, 15)], "and the next file is still read"


def test_a_missing_folder_has_no_events(tmp_path):
    assert event_files.scalars(tmp_path / "tensorboard", "train/loss") == []


def test_appended_losses_are_add_scalars_events_after_what_the_writer_held(tmp_path):
    """The same events as ``add_scalar`` (tag, step, value), in one append after the events the
    writer had queued; tensorboard's own reader reads them."""
    values = [float(v) for v in np.random.default_rng(0).random(50)]
    by_add_scalar, appended = tmp_path / "add_scalar", tmp_path / "appended"
    for events_dir in (by_add_scalar, appended):
        writer = SummaryWriter(str(events_dir), max_queue=1000)  # the epoch's own scalar stays queued
        writer.add_scalar("val/acc", 0.5, 49)
        if events_dir is by_add_scalar:
            for step, value in enumerate(values):
                writer.add_scalar("train/loss", value, step)
        else:
            event_files.append_scalars(writer, "train/loss", range(50), values)
        writer.close()
    ours, theirs = (accumulated(d, "train/loss") for d in (appended, by_add_scalar))
    assert [(s, v) for _, s, v in ours] == [(s, v) for _, s, v in theirs] and len(ours) == 50
    assert [(s, v) for _, s, v in accumulated(appended, "val/acc")] == [(49, 0.5)]
    (path,) = event_files.event_files(appended)
    tags = [Event.FromString(r).summary.value[0].tag for r in list(event_files.records(path))[1:]]  # 1st: the version
    assert tags == ["val/acc", *["train/loss"] * 50], "the queued event first, as add_scalar would have it"


def test_events_written_after_an_append_follow_it(tmp_path):
    """The writer's own file keeps working after an append: what it writes next comes after."""
    writer = SummaryWriter(str(tmp_path))
    event_files.append_scalars(writer, "train/loss", range(1, 4), [0.3, 0.2, 0.1])
    writer.add_scalar("val/acc", 0.9, 3)
    event_files.append_scalars(writer, "train/loss", range(4, 6), [0.05, 0.04])
    writer.add_scalar("val/acc", 0.95, 5)
    writer.close()
    (path,) = event_files.event_files(tmp_path)
    events = [Event.FromString(r) for r in list(event_files.records(path))[1:]]
    assert [(e.summary.value[0].tag, e.step) for e in events] == [
        *[("train/loss", s) for s in (1, 2, 3)],
        ("val/acc", 3),
        *[("train/loss", s) for s in (4, 5)],
        ("val/acc", 5),
    ]
    val = [(s, v) for _, s, v in accumulated(tmp_path, "val/acc")]
    assert val == [(3, pytest.approx(0.9)), (5, pytest.approx(0.95))]


def test_beside_a_file_that_keeps_its_own_position_every_event_survives(tmp_path):
    """TensorFlow's own file (tensorboard writes through it where TensorFlow is installed) keeps a
    position of its own, so an append beside it would be overwritten by its next write: there the
    steps go through add_scalar, and every event can be read back."""
    writer = SummaryWriter(str(tmp_path))
    event_writer = writer._get_file_writer().event_writer
    positional = open(event_writer._file_name, "r+b")  # noqa: SIM115 - the writer closes it
    positional.seek(0, 2)
    event_writer._general_file_writer = event_writer._async_writer._writer._writer = positional
    event_files.append_scalars(writer, "train/loss", [1, 2], [0.5, 0.25])
    writer.add_scalar("val/acc", 0.9, 2)
    writer.close()
    assert [(s, v) for _, s, v in accumulated(tmp_path, "train/loss")] == [(1, 0.5), (2, 0.25)]
    assert [(s, v) for _, s, v in accumulated(tmp_path, "val/acc")] == [(2, pytest.approx(0.9))]


@pytest.mark.parametrize("file", ["another object", "a file system without append", "not written yet"])
def test_only_tensorboards_stand_in_file_after_its_first_write_is_appended_to(tmp_path, monkeypatch, file):
    writer = SummaryWriter(str(tmp_path))
    stand_in = writer._get_file_writer().event_writer._general_file_writer
    if file == "another object":
        monkeypatch.setattr(writer._get_file_writer().event_writer, "_general_file_writer", object())
    else:  # a first write would truncate the file; without append, GFile rewrites it from a copy
        monkeypatch.setattr(stand_in, "fs_supports_append" if "append" in file else "write_started", False)
    calls = []
    monkeypatch.setattr(writer, "add_scalar", lambda tag, value, step: calls.append((tag, value, step)))
    event_files.append_scalars(writer, "train/loss", [1, 2], [0.5, 0.25])
    assert calls == [("train/loss", 0.5, 1), ("train/loss", 0.25, 2)]
    monkeypatch.undo()
    writer.close()


def test_after_the_writer_is_closed_an_append_goes_to_its_next_file(tmp_path):
    """As add_scalar: torch opens a new event file for what is written after close()."""
    writer = SummaryWriter(str(tmp_path))
    event_files.append_scalars(writer, "train/loss", [1], [0.5])
    writer.close()
    time.sleep(1.1)  # the next file's name (its opening second) sorts after the first's
    event_files.append_scalars(writer, "train/loss", [2], [0.25])
    writer.close()
    assert len(event_files.event_files(tmp_path)) == 2
    assert [(s, v) for _, s, v in accumulated(tmp_path, "train/loss")] == [(1, 0.5), (2, 0.25)]


def test_a_writer_that_is_not_torchs_gets_add_scalar_calls():
    class Writer:  # tensorboardX's SummaryWriter, say
        def __init__(self):
            self.calls = []

        def add_scalar(self, tag, value, step):
            self.calls.append((tag, value, step))

    writer = Writer()
    event_files.append_scalars(writer, "train/loss", [1, 2], [0.5, 0.25])
    assert writer.calls == [("train/loss", 0.5, 1), ("train/loss", 0.25, 2)]
