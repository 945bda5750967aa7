"""The README's command, run for real in a subprocess on synthetic data."""

from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import QUICK, read_metrics, run_cli


def test_train_writes_metrics_checkpoints_and_tensorboard(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    result = run_cli(
        "mnist_lab.train",
        *QUICK,
        "optimizer.lr=0.01",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["epochs"] == 2
    assert metrics["test_acc"] > 0.9 and metrics["best_val_acc"] > 0.9
    assert "optimizer.lr=0.01" in metrics["overrides"]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time_s"):
        assert len(metrics[key]) == 2, key
    assert metrics["lr"] == [0.01, 0.01] and metrics["device"] == "cpu"
    assert (run_dir / "checkpoints" / "best.ckpt").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert (run_dir / ".hydra" / "config.yaml").exists()
    assert "test/acc" in result.stdout and str(run_dir) in result.stdout

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    step_losses = events.Scalars("train/loss")
    steps_per_epoch = (2500 + 63) // 64
    assert [e.step for e in step_losses] == list(range(1, 2 * steps_per_epoch + 1))  # every step
    assert {"val/acc", "val/loss", "train/acc", "lr", "epoch_time_s", "test/acc"} <= set(events.Tags()["scalars"])


def test_batch_size_one_trains(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    run_cli(
        "mnist_lab.train",
        *QUICK,
        "data.batch_size=1",
        "trainer.max_epochs=1",
        "model=linear",
        "optimizer=sgd",
        "optimizer.lr=0.01",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["test_acc"] > 0.9


@pytest.mark.parametrize(
    "overrides",
    [
        ["model=cnn_small", "optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "scheduler=step"],
        ["loss=mse", "model=mlp", "model.hidden=[64,32]", "optimizer=adamw", "scheduler=cosine"],
        ["loss=l1", "optimizer=rmsprop", "scheduler=onecycle", "optimizer.lr=0.003"],
    ],
)
def test_other_models_losses_and_schedules_learn(tmp_path, synthetic_data_dir, overrides):
    run_dir = tmp_path / "run"
    run_cli(
        "mnist_lab.train", *QUICK, *overrides, f"hydra.run.dir={run_dir}", cwd=tmp_path, data_dir=synthetic_data_dir
    )
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["test_acc"] > 0.8, metrics


def test_help_lists_the_config_groups(tmp_path):
    out = run_cli("mnist_lab.train", "--help", cwd=tmp_path).stdout
    groups = (
        "model: cnn, cnn_small",
        "optimizer: adadelta, adam",
        "loss: ce, l1, l1_logits, mse, mse_logits",
        "scheduler:",
    )
    for group in groups:
        assert group in out, out
