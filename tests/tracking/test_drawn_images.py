"""The TensorBoard images are drawn straight into pixels (mnist_lab/tracking/drawn_images.py): what they
show, read back from the pixels."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lab.data.mnist_arrays import MEAN, STD
from mnist_lab.tracking.drawn_images import CELL, PAD, SCALE, confusion_matrix_image, mistakes_image

SIDE = 28
CRIMSON = np.array([220, 20, 60])


def rgb(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def test_mistakes_image_shows_each_digit_with_a_caption_above_it():
    torch.manual_seed(0)
    pixels = torch.rand(10, 1, SIDE, SIDE)
    x = (pixels - MEAN) / STD  # normalized, as the data module hands them
    pred, true = torch.arange(10), (torch.arange(10) + 1) % 10
    image = rgb(mistakes_image(x, pred, true))
    rows = 2  # 10 digits, 8 a row
    assert image.shape == (SCALE * (rows * (SIDE + PAD) + PAD), SCALE * (8 * (SIDE + PAD) + PAD), 3)
    for i in range(10):
        row, col = divmod(i, 8)
        top, left = SCALE * (PAD + row * (SIDE + PAD)), SCALE * (PAD + col * (SIDE + PAD))
        digit = image[top : top + SCALE * SIDE : SCALE, left : left + SCALE * SIDE : SCALE, 0]
        assert np.abs(digit / 255 - pixels[i, 0].numpy()).max() < 1 / 100, i  # gray, 128 levels
        caption = image[top - SCALE * PAD : top, left : left + SCALE * SIDE]
        reddish = np.abs(caption - CRIMSON).sum(axis=-1) < 60
        assert reddish.sum() > 20, f"no caption above digit {i}"
    image = rgb(mistakes_image(x[:3], pred[:3], true[:3]))  # fewer than a row: as wide as they are
    assert image.shape[1] == SCALE * (3 * (SIDE + PAD) + PAD)


def test_confusion_matrix_image_shades_each_cell_by_its_count_and_writes_it():
    counts = torch.zeros(10, 10, dtype=torch.long)
    counts[3, 5], counts[7, 7], counts[0, 0] = 40, 100, 10
    image = rgb(confusion_matrix_image(counts, "a title"))
    assert min(image.shape[:2]) >= 400
    left, top = 64, 56  # drawn_images.confusion_matrix_image's margins

    def cell(true, pred):
        return image[top + true * CELL : top + (true + 1) * CELL, left + pred * CELL : left + (pred + 1) * CELL]

    def background(true, pred):  # a corner of the cell, away from its text
        return cell(true, pred)[2, 2].sum()

    assert background(7, 7) < background(3, 5) < background(0, 0) < background(1, 1)  # darker is more
    assert (cell(1, 1) == cell(1, 1)[0, 0]).all(), "an empty cell has no text"
    for true, pred in [(3, 5), (7, 7), (0, 0)]:
        assert len(np.unique(cell(true, pred).reshape(-1, 3), axis=0)) > 1, f"no count in cell {true, pred}"


def test_the_runs_images_are_drawn_without_matplotlib(tensorboard_run):
    """matplotlib writes RGBA PNGs; the drawn images are palette PNGs."""
    events = EventAccumulator(str(tensorboard_run / "tensorboard"), size_guidance={"images": 0}).Reload()
    for tag in ("val/misclassified", "test/confusion_matrix"):
        for event in events.Images(tag):
            assert Image.open(io.BytesIO(event.encoded_image_string)).mode == "P", tag
