"""The TensorBoard images' pictures, drawn straight into pixels with Pillow (no matplotlib).

A matplotlib figure costs about a quarter of a second to lay out and render; these cost a few
milliseconds, so a run can afford one after every validation. Each is a palette image (one byte
a pixel: quick to encode as PNG, and small, which matters because TensorBoard's event writer
checksums every byte in Python). ``image.save(path)`` writes it as a PNG;
``tensorboard_images.log_image`` writes it to TensorBoard.

- ``mistakes_image``: digits in a grid, each captioned "<predicted> (true <label>)" above it;
- ``confusion_matrix_image``: counts per (true, predicted) digit, a blue shade per cell and the
  count written in it.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from mnist_lab import NUM_CLASSES
from mnist_lab.data.mnist_arrays import MEAN, STD

GRID_COLUMNS = 8
PAD = 12  # grid pixels between digits: room for a caption above each
SCALE = 2  # screen pixels per grid pixel: the digits drawn big enough to read
LEVELS = 128  # palette entries per colour ramp (two ramps fill a palette of 256)
CAPTION = (220, 20, 60)  # crimson
# matplotlib's "Blues" at 0, 1/2 and 1: light to dark
BLUES = np.array([(247, 251, 255), (107, 174, 214), (8, 48, 107)], dtype=np.float64)
CELL = 40  # screen pixels per cell of the confusion matrix


@lru_cache(maxsize=4)
def font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at ``size`` pixels (scalable where Pillow has FreeType, as its wheels do)."""
    return ImageFont.load_default(size=size)


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalized images back to [0, 1] intensities."""
    return (x * STD + MEAN).clamp(0, 1)


def ramp(start, end) -> np.ndarray:
    """``LEVELS`` RGB colours from ``start`` to ``end``, evenly spaced."""
    at = np.linspace(0, 1, LEVELS)[:, None]
    return np.asarray(start, dtype=np.float64) * (1 - at) + np.asarray(end, dtype=np.float64) * at


def palette_image(indices: np.ndarray, colours: np.ndarray) -> Image.Image:
    """A palette image of ``indices`` (uint8, H × W) into ``colours`` (up to 256 RGB rows)."""
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(colours.round().clip(0, 255).astype(np.uint8).tobytes())
    return image


def text_mask(size: tuple[int, int], texts: list[tuple[tuple[float, float], str, int, str]]) -> np.ndarray:
    """Ink (0 to 255, antialiased) of ``texts``, each (position, text, font size, anchor)."""
    mask = Image.new("L", size, 0)
    draw = ImageDraw.Draw(mask)
    for position, text, size_px, anchor in texts:
        draw.text(position, text, fill=255, font=font(size_px), anchor=anchor)
    return np.array(mask)


def digit_grid(pixels: np.ndarray, columns: int) -> np.ndarray:
    """Images (N × H × W, in [0, 1]) in rows of ``columns`` on white, ``PAD`` pixels apart and
    around (torchvision's ``make_grid`` layout, in numpy: no torch threads for a few kilobytes)."""
    n, side = len(pixels), pixels.shape[-1]
    rows = -(-n // columns)
    grid = np.ones((rows * (side + PAD) + PAD, columns * (side + PAD) + PAD), dtype=np.float32)
    for i, digit in enumerate(pixels):
        row, col = divmod(i, columns)
        top, left = PAD + row * (side + PAD), PAD + col * (side + PAD)
        grid[top : top + side, left : left + side] = digit
    return grid


def mistakes_image(x: torch.Tensor, pred: torch.Tensor, true: torch.Tensor) -> Image.Image:
    """The digits ``x`` (normalized, N × 1 × 28 × 28) in rows of ``GRID_COLUMNS``, each captioned
    "<predicted> (true <label>)" above it, at ``SCALE`` screen pixels per image pixel."""
    side, columns = x.shape[-1], min(len(x), GRID_COLUMNS)
    pixels = np.clip(x[:, 0].float().cpu().numpy() * STD + MEAN, 0, 1)
    grid = digit_grid(pixels, columns)
    gray = (grid * (LEVELS - 1)).round().astype(np.uint8).repeat(SCALE, 0).repeat(SCALE, 1)
    captions = []
    for i, (p, t) in enumerate(zip(pred.tolist(), true.tolist(), strict=True)):
        row, col = divmod(i, columns)
        centre = SCALE * (PAD + col * (side + PAD) + side / 2)
        bottom = SCALE * (PAD + row * (side + PAD)) - 2
        captions.append(((centre, bottom), f"{p} (true {t})", 6 * SCALE, "md"))
    ink = text_mask((gray.shape[1], gray.shape[0]), captions)
    # captions sit on the white padding: their ink is crimson over white, the second ramp
    indices = np.where(ink > 0, LEVELS + (ink.astype(np.uint16) * (LEVELS - 1) + 127) // 255, gray)
    return palette_image(indices, np.concatenate([ramp((0, 0, 0), (255, 255, 255)), ramp((255, 255, 255), CAPTION)]))


def blues(fraction: np.ndarray) -> np.ndarray:
    """RGB of "Blues" for each value in [0, 1] (piecewise linear through its three stops)."""
    at = np.clip(fraction, 0, 1)[..., None] * 2
    return BLUES[0] + np.minimum(at, 1) * (BLUES[1] - BLUES[0]) + np.clip(at - 1, 0, 1) * (BLUES[2] - BLUES[1])


def confusion_matrix_image(confusion: torch.Tensor, title: str) -> Image.Image:
    """Counts per (true: row, predicted: column) digit: each cell shaded by its count (white is
    none, darkest blue the largest count) with the count written in it (none in an empty cell),
    and a colour bar."""
    counts = confusion.cpu().numpy().astype(np.int64)
    # the image's arrays in bytes (palette indices, ink) and uint16 where ink is scaled: each numpy
    # pass over the 560 × 552 pixels costs an eighth of what int64 would
    left, top, right, bottom = 64, 56, 96, 56
    size = NUM_CLASSES * CELL
    width, height = left + size + right, top + size + bottom
    largest = max(int(counts.max()), 1)
    # palette: LEVELS shades of blue, then LEVELS grays from white to black (text on white)
    shade = ((counts * (LEVELS - 1) + largest // 2) // largest).astype(np.uint8)
    indices = np.full((height, width), LEVELS, dtype=np.uint8)  # white: the gray ramp's start
    indices[top : top + size, left : left + size] = shade.repeat(CELL, 0).repeat(CELL, 1)
    bar_x = left + size + 24
    indices[top : top + size, bar_x : bar_x + 16] = np.linspace(LEVELS - 1, 0, size).round()[:, None].astype(np.uint8)
    _frame(indices, left - 1, top - 1, left + size, top + size)
    _frame(indices, bar_x - 1, top - 1, bar_x + 16, top + size)
    inside, outside = [], []
    for true, pred in zip(*counts.nonzero(), strict=True):
        n = int(counts[true, pred])
        centre = (left + pred * CELL + CELL / 2, top + true * CELL + CELL / 2)
        (inside if n > largest / 2 else outside).append((centre, str(n), 12, "mm"))
    labels = [
        ((left + size / 2, top + size + 24), "predicted", 14, "mt"),
        ((left + size / 2, top / 2), title, 14, "mm"),
    ]
    for digit in range(NUM_CLASSES):
        middle = digit * CELL + CELL / 2
        labels += [
            ((left + middle, top + size + 4), str(digit), 12, "mt"),
            ((left - 6, top + middle), str(digit), 12, "rm"),
        ]
    labels += [((bar_x + 20, top), str(largest), 12, "lt"), ((bar_x + 20, top + size), "0", 12, "lb")]
    ink = text_mask((width, height), labels + outside)
    true_label = np.asarray(
        Image.fromarray(text_mask((size, 20), [((size / 2, 10), "true", 14, "mm")])).rotate(90, expand=True)
    )
    ink[top : top + size, 12:32] = np.maximum(ink[top : top + size, 12:32], true_label)
    white_ink = text_mask((width, height), inside)
    # black text: the gray ramp (exact on white, the darker side of it on a shaded cell);
    # white text (on the darkest cells): the lightest shade of blue
    gray = (LEVELS + (ink.astype(np.uint16) * (LEVELS - 1) + 127) // 255).astype(np.uint8)
    indices = np.where(
        ink > 0, np.where(indices >= LEVELS, gray, np.where(ink > 127, 2 * LEVELS - 1, indices)), indices
    )
    indices = np.where(white_ink > 127, 0, indices)
    return palette_image(indices, np.concatenate([blues(np.linspace(0, 1, LEVELS)), ramp((255, 255, 255), (0, 0, 0))]))


def _frame(indices: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> None:
    """A black one-pixel rectangle (palette index of black: the gray ramp's end)."""
    black = 2 * LEVELS - 1
    indices[y0, x0 : x1 + 1] = indices[y1, x0 : x1 + 1] = black
    indices[y0 : y1 + 1, x0] = indices[y0 : y1 + 1, x1] = black
