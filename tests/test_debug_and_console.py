"""What a run prints, and the config groups that switch Lightning's parts and tools:
``callbacks`` (each one off with ``~callbacks.<name>``) and ``debug`` (fdr, limit, overfit,
profiler), run as a user would."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from mnist_lab.cli.console import settings_line
from tests.conftest import QUICK, compose_train, read_metrics, run_cli


def test_a_run_prints_its_settings_and_its_result_and_nothing_else(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    result = run_cli(
        "mnist_lab.train",
        *QUICK,
        "trainer.max_epochs=1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    lines = result.stdout.splitlines()
    assert lines[0] == "train MLP [128] · Adam lr=0.001 · CrossEntropyLoss · batch 64 · epochs 1 · seed 42"
    assert lines[1].startswith("[ok] test/acc ") and lines[1].endswith(f"run {run_dir}")
    assert len(lines) == 2, result.stdout
    assert result.stderr == ""  # no device notes, no advertisement, no deprecation warning


def test_debug_fdr_runs_one_batch_of_each_and_records_it(tmp_path, synthetic_data_dir):
    """Lightning's fast_dev_run, with the resolved config printed as a tree first."""
    run_dir = tmp_path / "run"
    result = run_cli(
        "mnist_lab.train",
        "debug=fdr",
        "print_config=true",
        "data.val_size=500",
        "trainer.accelerator=cpu",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    tree = result.stdout.split("train MLP")[0]
    assert tree.startswith("config\n") and "├── trainer" in tree and "fast_dev_run: true" in tree
    assert "└── step" in tree and "cuda_graph: auto" in tree
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["epochs"] == 1 and len(metrics["train_acc"]) == 1
    assert metrics["test_acc"] is not None and metrics["best_val_acc"] is not None


def test_debug_profiler_prints_where_the_time_went(tmp_path, synthetic_data_dir):
    result = run_cli(
        "mnist_lab.train",
        "debug=profiler",
        "data.val_size=500",
        "trainer.accelerator=cpu",
        "trainer.limit_train_batches=5",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    output = result.stdout + result.stderr
    assert "FIT Profiler Report" in output and "run_training_epoch" in output


def test_debug_overfit_trains_on_the_same_batches_every_epoch(tmp_path, synthetic_data_dir):
    from mnist_lab.run import experiment

    cfg = compose_train(
        "debug=overfit",
        "trainer.max_epochs=8",
        "trainer.accelerator=cpu",
        "data.val_size=500",
        f"data.data_dir={synthetic_data_dir}",
        "~callbacks.images",
    )
    metrics = experiment.run(cfg, tmp_path, [])
    assert metrics["status"] == "ok" and metrics["epochs"] == 8
    assert metrics["train_acc"][-1] == 1.0 and metrics["train_loss"][-1] < 0.05  # 4 batches, learnt by heart


def test_callbacks_switch_off_with_an_override_and_early_stopping_on_with_a_patience(tmp_path, synthetic_data_dir):
    from mnist_lab.run import experiment

    cfg = compose_train(
        *QUICK,
        "trainer.max_epochs=4",
        f"data.data_dir={synthetic_data_dir}",
        "optimizer.lr=1e-9",
        "~callbacks.checkpoint",
        "~callbacks.images",
        "callbacks.early_stopping.patience=1",
    )
    metrics = experiment.run(cfg, tmp_path, [])
    # at lr=1e-9 val/acc never improves on epoch 1's, so patience 1 stops after epoch 2
    assert metrics["status"] == "ok" and metrics["epochs"] == 2
    assert metrics["test_acc"] is not None  # the last weights, as there is no best.ckpt
    assert not (tmp_path / "checkpoints").exists()


def test_each_callback_is_an_entry_of_the_callbacks_group(tmp_path):
    from mnist_lab.run.experiment import build_callbacks

    def built(*overrides: str) -> set[str]:
        return {type(c).__name__ for c in build_callbacks(compose_train(*overrides), tmp_path)}

    assert built() == {"RunDirCheckpoint", "TensorBoardImages"}  # no patience: no early stopping; no tty: no bar
    assert built("~callbacks.images") == {"RunDirCheckpoint"}
    assert built("callbacks.early_stopping.patience=2") == {"RunDirCheckpoint", "TensorBoardImages", "EarlyStopping"}


@pytest.mark.parametrize("overfit_batches", [0, 4])
def test_the_training_batches_repeat_from_epoch_to_epoch_only_when_overfitting(synthetic_data_dir, overfit_batches):
    import torch

    from mnist_lab.data.datamodule import MNISTDataModule

    trainer = SimpleNamespace(
        overfit_batches=overfit_batches,
        current_epoch=0,
        global_rank=0,
        world_size=1,
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
    )
    data = MNISTDataModule(str(synthetic_data_dir), val_size=500)
    data.trainer = trainer
    data.setup("fit")
    first_batches = []
    for epoch in (0, 1):
        trainer.current_epoch = epoch
        first_batches.append(next(iter(data.train_dataloader()))[1])
    assert torch.equal(*first_batches) == bool(overfit_batches)


@pytest.mark.parametrize(
    "overrides, model",
    [([], "MLP [128]"), (["model=linear"], "softmax regression"), (["model=cnn"], "CNN [32, 64]")],
)
def test_the_settings_line_names_the_model(overrides, model):
    assert settings_line(compose_train(*overrides)).startswith(f"train {model} · ")
