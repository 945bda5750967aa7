"""The sweep's last line: each part where it ran, the pack's build and check among them."""

from __future__ import annotations

import time

import pytest
import torch

from mnist_lab.cli import sweep_clock
from mnist_lab.data import datamodule
from mnist_lab.packed import pack_run
from tests.conftest import sweep_parts


@pytest.fixture
def clock(monkeypatch):
    monkeypatch.setattr(sweep_clock, "SECONDS", sweep_clock.Counter())
    return sweep_clock.SECONDS


def parts(line: str) -> dict[str, float]:
    return sweep_parts(line.split("(", 1)[1])


def test_optional_parts_are_named_only_where_they_took_time(clock):
    clock.update({"start-up": 4.0, "configs": 0.3, "pack sizes": 0.01, "pack checks": 0.4, "training": 1.5})
    shown = parts(sweep_clock.breakdown())
    assert "pack sizes" not in shown, "a probe of 0.0 s is noise"
    assert list(shown)[:4] == ["start-up", "configs", "pack checks", "training"], shown
    assert shown["pack checks"] == 0.4


def test_a_packs_build_and_check_are_timed_as_pack_checks(clock, monkeypatch):
    def slow_build(unit):
        time.sleep(0.2)
        return None, [], "the pack computes otherwise"  # its jobs then train alone

    class Launch:
        def each_alone(self, unit, why):
            return {}

    monkeypatch.setattr(pack_run, "built_pack", slow_build)
    assert pack_run.run_pack(Launch(), unit=None) == {}
    assert clock["pack checks"] >= 0.2, "the pack's proof against the solo step is named, not left in 'other'"
    assert "pack checks" in parts(sweep_clock.breakdown())


def test_a_part_timed_inside_another_is_counted_once(clock):
    with sweep_clock.timed("records and images"):
        time.sleep(0.1)
        with sweep_clock.timed("data"):
            time.sleep(0.2)
        started = time.perf_counter()  # a job's training, measured inside its block (run_record)
        time.sleep(0.2)
        sweep_clock.add("training", time.perf_counter() - started)
    assert clock["data"] >= 0.2 and clock["training"] >= 0.2
    assert 0.1 <= clock["records and images"] < 0.2, "the block's own time, the inner parts' counted apart"


def test_a_part_timed_inside_itself_is_counted_once(clock):
    """Hydra's set-up of a job (launch.run_alone) around the job's own records (train.main)."""
    with sweep_clock.timed("records and images"):
        time.sleep(0.1)
        with sweep_clock.timed("records and images"):
            time.sleep(0.1)
    assert 0.2 <= clock["records and images"] < 0.3


def test_mnists_first_load_and_split_are_timed_as_data(clock, synthetic_data_dir, monkeypatch):
    monkeypatch.setattr(datamodule, "_SPLIT_CACHE", {})
    monkeypatch.setattr(datamodule, "_DEVICE_CACHE", {})
    settings = {"data_dir": str(synthetic_data_dir), "val_size": 500, "split_seed": 0}
    datamodule.split_tensors(settings, torch.device("cpu"))
    first = clock["data"]
    assert first > 0
    datamodule.split_tensors(settings, torch.device("cpu"))
    assert clock["data"] == first, "a cached split costs nothing more"
