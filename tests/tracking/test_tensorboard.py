"""What a run writes for TensorBoard, read back with TensorBoard's own event reader."""

from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from mnist_lab.tracking.tensorboard_images import TensorBoardImages, first_mistakes
from tests.conftest import read_metrics

STEPS_PER_EPOCH, EPOCHS, VAL_SIZE = 3, 2, 500  # tests/conftest.py: TENSORBOARD_RUN
PAD, SIDE, COLUMNS = 12, 28, 8  # the misclassified grid's layout (tensorboard_images.py)


@pytest.fixture(scope="module")
def events(tensorboard_run):
    accumulator = EventAccumulator(
        str(tensorboard_run / "tensorboard"),
        size_guidance={"scalars": 0, "images": 0, "tensors": 0},  # 0: keep every event
    )
    return accumulator.Reload()


@pytest.fixture(scope="module")
def metrics(tensorboard_run):
    return read_metrics(tensorboard_run)


def scalars(events, tag) -> tuple[list[int], list[float]]:
    points = events.Scalars(tag)
    return [p.step for p in points], [p.value for p in points]


def epoch_ends() -> list[int]:
    return [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]


def one_per_epoch(steps: list[int]) -> bool:
    """One step per epoch, inside that epoch's steps. (Lightning logs epoch-end metrics at the
    epoch's last step counted from 0: one less than train/loss, which counts steps done.)"""
    return len(steps) == EPOCHS and all(
        end - STEPS_PER_EPOCH < step <= end for step, end in zip(steps, epoch_ends(), strict=True)
    )


def test_train_loss_has_one_point_per_optimizer_step(events, metrics):
    steps, losses = scalars(events, "train/loss")
    assert steps == list(range(1, STEPS_PER_EPOCH * EPOCHS + 1))
    per_epoch = np.reshape(losses, (EPOCHS, STEPS_PER_EPOCH)).mean(axis=1)
    assert per_epoch == pytest.approx(metrics["train_loss"], rel=1e-5)


@pytest.mark.parametrize(
    "tag, key",
    [
        ("val/acc", "val_acc"),
        ("val/loss", "val_loss"),
        ("train/acc", "train_acc"),
        ("lr", "lr"),
        ("epoch_time_s", "epoch_time_s"),
    ],
)
def test_per_epoch_scalars_match_metrics_json(events, metrics, tag, key):
    steps, values = scalars(events, tag)
    assert one_per_epoch(steps), steps
    assert values == pytest.approx(metrics[key], rel=1e-5)
    assert all(math.isfinite(v) for v in values)


def decoded(image_event) -> Image.Image:
    image = Image.open(io.BytesIO(image_event.encoded_image_string))
    assert image.size == (image_event.width, image_event.height)
    assert np.asarray(image.convert("L")).std() > 10, "a blank image"
    return image


def test_training_samples_grid_is_written_once(events):
    (grid,) = events.Images("train/samples")
    assert grid.step == 0
    # 32 samples, 8 per row, 28 px each with make_grid's 2 px padding
    assert (grid.width, grid.height) == (COLUMNS * 30 + 2, 4 * 30 + 2)
    decoded(grid)


def test_misclassified_grid_after_each_validation_shows_that_validations_mistakes(events, metrics):
    grids = events.Images("val/misclassified")
    assert [g.step for g in grids] == epoch_ends()
    for grid, val_acc in zip(grids, metrics["val_acc"], strict=True):
        mistakes = round((1 - val_acc) * VAL_SIZE)
        rows = math.ceil(min(mistakes, 32) / COLUMNS)
        assert mistakes > 0, "the tiny run is meant to make mistakes"
        # the figure is drawn at 2 px per grid pixel: rows of 28 px digits plus caption space
        assert grid.width == pytest.approx(2 * (COLUMNS * (SIDE + PAD) + PAD), abs=1)
        assert grid.height == pytest.approx(2 * (rows * (SIDE + PAD) + PAD), abs=1)
        decoded(grid)


def test_confusion_matrix_is_written_at_test(events):
    (matrix,) = events.Images("test/confusion_matrix")
    assert matrix.step == STEPS_PER_EPOCH * EPOCHS
    assert min(matrix.width, matrix.height) >= 400
    decoded(matrix)


def hparams_plugin_data(events) -> dict[str, object]:
    content = events.PluginTagToContent("hparams")
    return {
        "experiment": hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG]),
        "start": hparams_metadata.parse_session_start_info_plugin_data(
            content[hparams_metadata.SESSION_START_INFO_TAG]
        ),
        "end": hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG]),
    }


def test_hparams_hold_the_runs_settings_and_final_metrics(events, metrics):
    data = hparams_plugin_data(events)
    declared = {info.name for info in data["experiment"].hparam_infos}
    assert {"model", "optimizer", "loss", "lr", "batch_size", "optimizer.lr", "trainer.limit_train_batches"} <= declared
    values = data["start"].hparams
    assert values["model"].string_value == "MLP"
    assert values["optimizer"].string_value == "Adam"
    assert values["lr"].number_value == pytest.approx(1e-4)
    assert values["batch_size"].number_value == 64
    assert data["end"].status == api_pb2.STATUS_SUCCESS

    final = {"best/val_acc": "best_val_acc", "test/acc": "test_acc", "train_time_s": "train_time_s"}
    assert {info.name.tag for info in data["experiment"].metric_infos} == set(final)
    for tag, key in final.items():  # the HParams tab shows each metric's last value
        assert events.Scalars(tag)[-1].value == pytest.approx(metrics[key], rel=1e-5), tag


class FixedLogits(torch.nn.Module):
    """A 'net' whose prediction for image i is ``predictions[i]`` (images hold their index)."""

    def __init__(self, predictions):
        super().__init__()
        self.logits = torch.nn.functional.one_hot(torch.tensor(predictions), 10).float()

    def forward(self, x):
        return self.logits[x[:, 0, 0, 0].long()]


def test_first_mistakes_are_the_wrong_predictions_in_dataset_order():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    predicted = [0, 7, 2, 3, 1, 5, 6, 0, 8, 4]  # wrong at 1, 4, 7, 9
    images = torch.arange(10).float().reshape(10, 1, 1, 1).expand(10, 1, 28, 28)
    batches = [(images[:4], labels[:4]), (images[4:], labels[4:])]
    x, pred, true, wrong = first_mistakes(FixedLogits(predicted), batches, torch.device("cpu"), 3)
    assert wrong.tolist() == [True, True, True]
    assert x[:, 0, 0, 0].tolist() == [1, 4, 7]
    assert (pred.tolist(), true.tolist()) == ([7, 1, 0], [1, 4, 7])
    x, pred, true, wrong = first_mistakes(FixedLogits(predicted), batches, torch.device("cpu"), 6)
    assert wrong.tolist() == [True] * 4 + [False] * 2  # then correct rows, flagged as such
    x, _, _, wrong = first_mistakes(FixedLogits(predicted), batches, torch.device("cpu"), 8, 5)
    assert x[wrong][:, 0, 0, 0].tolist() == [1, 4]  # only the first 5 images are examined


def test_an_interrupted_run_still_writes_the_misclassified_grids(tmp_path):
    logger = TensorBoardLogger(tmp_path, name="tensorboard", version="")
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, loggers=[logger])
    images = TensorBoardImages()
    x = torch.zeros(3, 1, 28, 28)
    images.mistakes.append(
        (5, (x, torch.tensor([1, 2, 3]), torch.tensor([7, 2, 9]), torch.tensor([True, False, True])))
    )
    images.on_exception(trainer, None, KeyboardInterrupt())
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    (grid,) = events.Images("val/misclassified")
    assert grid.step == 5 and grid.height == 2 * (SIDE + 2 * PAD)  # one row: the 2 mistakes
