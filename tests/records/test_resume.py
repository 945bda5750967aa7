"""Runs that are stopped: Ctrl-C and SIGTERM, kill -9 and ``ckpt_path=last``, and determinism.

Checkpoints are per epoch (``last.ckpt`` after every training epoch), so a run killed
mid-epoch redoes that epoch on resume; with the per-epoch seeds of the batch order and of
dropout, it ends with the same numbers as a run that was never stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_metrics, run_cli

# Dropout (torch RNG), a step schedule (scheduler state) and a ragged last batch (2500 % 96):
# everything a resume must restore.
RUN = [
    "data.val_size=500",
    "data.eval_batch_size=1000",
    "trainer.accelerator=cpu",
    "trainer.deterministic=true",
    "trainer.max_epochs=3",
    "data.batch_size=96",
    "model.dropout=0.3",
    "scheduler=step",
    "scheduler.gamma=0.5",
    "seed=7",
]
STEPS_PER_EPOCH = 27  # ceil(2500 / 96)
WALL_CLOCK = ("train_time_s", "epoch_time_s", "train_started_at")
ABOUT_THE_COMMAND = ("run_dir", "overrides")

# `python -m mnist_lab.train ...` that kills itself with SIGKILL (kill -9) before optimizer step
# KILL_AT_STEP + 1, in the middle of an epoch.
KILLED_AT_STEP = """
import os, runpy, signal, sys
from mnist_lab.run.classifier import Classifier

training_step = Classifier.training_step

def training_step_then_kill(self, batch, batch_idx):
    if self.trainer.global_step == int(os.environ["KILL_AT_STEP"]):
        os.kill(os.getpid(), signal.SIGKILL)
    return training_step(self, batch, batch_idx)

Classifier.training_step = training_step_then_kill
sys.argv[0] = "mnist_lab.train"
runpy.run_module("mnist_lab.train", run_name="__main__", alter_sys=True)
"""


def numbers(metrics: dict) -> dict:
    """metrics.json without wall-clock times and without what names the command and its dir."""
    return {k: v for k, v in metrics.items() if k not in WALL_CLOCK + ABOUT_THE_COMMAND}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, synthetic_data_dir) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    run_cli("mnist_lab.train", *RUN, f"hydra.run.dir={cwd / 'run'}", cwd=cwd, data_dir=synthetic_data_dir)
    metrics = read_metrics(cwd / "run")
    assert metrics["status"] == "ok" and metrics["epochs"] == 3
    return metrics


@pytest.mark.slow
def test_same_command_and_seed_give_identical_numbers(tmp_path, synthetic_data_dir, uninterrupted):
    run_cli("mnist_lab.train", *RUN, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, data_dir=synthetic_data_dir)
    assert numbers(read_metrics(tmp_path / "run")) == numbers(uninterrupted)


@pytest.mark.slow
def test_kill_9_mid_epoch_then_resume_gives_identical_numbers(tmp_path, synthetic_data_dir, uninterrupted):
    run_dir = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AT_STEP, *RUN, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env={**os.environ, "MNIST_LAB_DATA_DIR": str(synthetic_data_dir), "KILL_AT_STEP": str(STEPS_PER_EPOCH + 10)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    before = read_metrics(run_dir)  # the record of the first epoch, written before the second
    assert before["status"] == "running" and before["epochs"] == 1
    assert (run_dir / "checkpoints" / "last.ckpt").exists()

    resumed = run_cli(
        "mnist_lab.train", *RUN, f"hydra.run.dir={run_dir}", "ckpt_path=last", cwd=tmp_path, data_dir=synthetic_data_dir
    )
    assert "[ok]" in resumed.stdout
    assert numbers(read_metrics(run_dir)) == numbers(uninterrupted)


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_record_interrupted_and_exit_cleanly(tmp_path, synthetic_data_dir, signum, code):
    run_dir = tmp_path / "run"
    args = [*RUN, "trainer.max_epochs=1000", f"hydra.run.dir={run_dir}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "mnist_lab.train", *args],
        cwd=tmp_path,
        text=True,
        env={**os.environ, "MNIST_LAB_DATA_DIR": str(synthetic_data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        # as from a terminal: a shell that starts pytest in the background (`make test &`)
        # leaves SIGINT ignored, and an ignored signal stays ignored in every child
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    last = run_dir / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.communicate()[1][-3000:]
    process.send_signal(signum)  # training is under way: one epoch done, 999 to go
    stdout, stderr = process.communicate(timeout=120)

    assert process.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "interrupted" and metrics["stopped_by"] == signum.name
    assert metrics["epochs"] >= 1 and len(metrics["val_acc"]) == metrics["epochs"]
    assert last.exists()
    assert stdout.strip().splitlines()[-1].startswith("[interrupted]")
    resume = stderr.strip().splitlines()[-1]
    assert resume.startswith("resume with: python -m mnist_lab.train data.val_size=500")
    assert resume.endswith(f"trainer.max_epochs=1000 hydra.run.dir={run_dir} ckpt_path=last")


@pytest.mark.slow
@pytest.mark.parametrize(
    "diverging",
    [
        ["optimizer.lr=1e6"],  # Adam: the loss grows past divergence_threshold, stays finite
        ["optimizer=sgd", "optimizer.lr=1e38"],  # the loss becomes NaN, which JSON cannot hold
    ],
)
def test_a_diverged_run_exits_3_with_the_step(tmp_path, synthetic_data_dir, diverging):
    run_dir = tmp_path / "run"
    result = run_cli(
        "mnist_lab.train",
        *RUN,
        *diverging,
        "model.dropout=0.0",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        check=False,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "diverged" and 1 <= metrics["diverged_at_step"] <= STEPS_PER_EPOCH
    assert metrics["epochs"] == 1 and "test_acc" not in metrics
    assert result.stdout.strip().splitlines()[-1].startswith("[diverged]")


def test_resume_command_drops_the_old_ckpt_path_and_quotes_lists():
    from mnist_lab.train import resume_command

    command = resume_command(["model.hidden=[64,32]", "ckpt_path=last"], Path("out/run 1"))
    assert command == ("python -m mnist_lab.train 'model.hidden=[64,32]' 'hydra.run.dir=out/run 1' ckpt_path=last")


@pytest.mark.slow
def test_a_sweep_reruns_with_ckpt_path_last_into_its_own_job_folders(tmp_path, synthetic_data_dir):
    sweep = [
        "-m",
        "optimizer.lr=0.01,0.1",
        "hydra.sweep.dir=sweep",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=5",
        *RUN[:4],
    ]
    run_cli("mnist_lab.train", *sweep, cwd=tmp_path, data_dir=synthetic_data_dir)
    jobs = sorted((tmp_path / "sweep").glob("*/metrics.json"))
    first = [read_metrics(job.parent) for job in jobs]
    assert [m["status"] for m in first] == ["ok", "ok"]

    again = run_cli("mnist_lab.train", *sweep, "ckpt_path=last", cwd=tmp_path, data_dir=synthetic_data_dir)
    assert "sweep: 2 jobs, 2 ok" in again.stdout
    assert sorted((tmp_path / "sweep").glob("*/metrics.json")) == jobs  # no new folders
    assert [numbers(read_metrics(job.parent)) for job in jobs] == [numbers(m) for m in first]


def test_a_checkpoint_save_that_dies_halfway_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    """Lightning writes a checkpoint in the system temp dir, then shutil.move()s it into place:
    a copy, not a rename, when that dir is on another filesystem. A copy killed halfway must
    not cost the previous last.ckpt."""
    import shutil

    import torch

    from mnist_lab.records.run_dir_checkpoint import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    last = tmp_path / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "weights": torch.ones(3)}, last)

    def copy_killed_halfway(src, dst):
        data = open(src, "rb").read()
        open(dst, "wb").write(data[: len(data) // 2])
        raise KeyboardInterrupt  # stands for the kill

    monkeypatch.setattr(shutil, "move", copy_killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"epoch": 2, "weights": torch.zeros(3)}, last)
    assert torch.load(last, weights_only=True)["epoch"] == 1


def test_last_ckpt_holds_every_epoch_also_when_val_acc_does_not_improve(tmp_path, synthetic_data_dir):
    """A learning rate too small to move val/acc: best.ckpt stays at epoch 0, last.ckpt must
    follow every epoch (Lightning alone writes it only with a new best)."""
    import torch

    run_dir = tmp_path / "run"
    run_cli(
        "mnist_lab.train",
        "debug=quick",
        "trainer.max_epochs=3",
        "optimizer.lr=1e-12",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    metrics = read_metrics(run_dir)
    assert len(set(metrics["val_acc"])) == 1  # never improved after the first epoch
    best, last = (torch.load(run_dir / "checkpoints" / f"{name}.ckpt", weights_only=False) for name in ("best", "last"))
    assert best["epoch"] == 0
    assert last["epoch"] == 2 and last["global_step"] == 3 * best["global_step"]
