"""A packed job's TensorBoard events are its solo run's (issue 26, defect 7): read with TensorBoard's
own EventAccumulator, against the same sweep run with ``hydra/launcher=basic``, uninterrupted and
resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import QUICK, read_metrics, run_cli

# Two jobs of one pack, 2 epochs; the second diverges in its first epoch (no test, no second epoch).
GRID = [*QUICK, "model.hidden=[32]", "step.check_every=10", "optimizer.lr=0.001,1000000"]
JOBS = (
    "0_model.hidden=32,optimizer.lr=0.001,step.check_every=10",
    "1_model.hidden=32,optimizer.lr=1000000,step.check_every=10",
)


def tensorboard_of(job_dir: Path) -> dict:
    """What TensorBoard shows of a job: each scalar's and image's steps, by tag, and its hparams.yaml."""
    events = EventAccumulator(str(job_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    shown = {f"scalar {tag}": [e.step for e in events.Scalars(tag)] for tag in tags["scalars"]}
    shown |= {f"image {tag}": [e.step for e in events.Images(tag)] for tag in tags["images"]}
    shown["hparams.yaml"] = (job_dir / "tensorboard" / "hparams.yaml").read_text()
    return shown


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory, synthetic_data_dir) -> Path:
    """The grid's jobs run one by one by Hydra's basic launcher: each is its solo run."""
    sweep_dir = tmp_path_factory.mktemp("basic") / "sweep"
    run_cli(
        "mnist_lab.train", "-m", *GRID, "hydra/launcher=basic", f"hydra.sweep.dir={sweep_dir}",
        cwd=sweep_dir.parent, data_dir=synthetic_data_dir,
    )  # fmt: skip
    return sweep_dir


def assert_same_tensorboard(packed: Path, basic: Path) -> None:
    for job in JOBS:
        ours, solo = tensorboard_of(packed / job), tensorboard_of(basic / job)
        assert ours == solo, (
            job,
            {k: (ours.get(k), solo.get(k)) for k in ours.keys() | solo.keys() if ours.get(k) != solo.get(k)},
        )


@pytest.mark.slow
def test_a_packed_jobs_tensorboard_is_its_solo_runs(basic_sweep, tmp_path, synthetic_data_dir):
    """The same tags, events per tag and steps (``epoch`` with each logged dict and the test,
    ``hparams.yaml`` empty, as Lightning writes a solo run's); at 065fe68 a packed job wrote
    ``epoch`` once per epoch and none with the test, and filled ``hparams.yaml``."""
    sweep_dir = tmp_path / "packed"
    result = run_cli(
        "mnist_lab.train", "-m", *GRID, f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path, data_dir=synthetic_data_dir
    )
    assert "2 in 1 packs" in result.stdout + result.stderr
    assert [read_metrics(sweep_dir / job)["status"] for job in JOBS] == ["ok", "diverged"]
    assert_same_tensorboard(sweep_dir, basic_sweep)


# `python -m mnist_lab.train ...` that kills itself (kill -9) once both packed jobs ended their first epoch.
KILLED_AFTER_EPOCH_1 = """
import os, runpy, signal, sys
from mnist_lab.packed.job import PackedJob

end_epoch, ended = PackedJob.end_epoch, []

def end_epoch_then_kill(self, *args):
    end_epoch(self, *args)
    ended.append(self.index)
    if len(ended) == 2:
        os.kill(os.getpid(), signal.SIGKILL)

PackedJob.end_epoch = end_epoch_then_kill
sys.argv[0] = "mnist_lab.train"
runpy.run_module("mnist_lab.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_resumed_packed_jobs_tensorboard_is_its_solo_runs(basic_sweep, tmp_path, synthetic_data_dir):
    """Killed after the pack's first epoch and resumed with ``ckpt_path=last``: one ``train/samples``,
    every tag's events once per step, as the uninterrupted solo run's."""
    sweep_dir = tmp_path / "killed"
    grid = [*QUICK, "model.hidden=[32]", "step.check_every=10", "optimizer.lr=0.001,0.002"]
    args = ["-m", *grid, f"hydra.sweep.dir={sweep_dir}"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_EPOCH_1, *args],
        cwd=tmp_path, env={**os.environ, "MNIST_LAB_DATA_DIR": str(synthetic_data_dir)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    run_cli("mnist_lab.train", *args, "ckpt_path=last", cwd=tmp_path, data_dir=synthetic_data_dir)
    job = "0_model.hidden=32,optimizer.lr=0.001,step.check_every=10"
    assert read_metrics(sweep_dir / job)["status"] == "ok"
    assert tensorboard_of(sweep_dir / job) == tensorboard_of(basic_sweep / JOBS[0])
