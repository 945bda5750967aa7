"""Classify your own images of handwritten digits.

    python -m mnist_lab.predict ckpt_path=outputs/2024-05-01/12-00-00 images='digits/*.png'

Each image (any size, dark ink on a light background or light on dark, one digit per image)
is made to look like an MNIST digit the way MNIST itself was made: grayscale, ink bright on
black, cropped to the digit, scaled to fit 20x20 keeping its aspect ratio, and placed in a
28x28 field so that its centre of mass is at the centre; then normalized like the training
data. Prints each file's predicted digit and the top probabilities.
"""

from __future__ import annotations

# isort: off
import mnist_lab.cli.quiet_interrupt  # noqa: F401  (first: a Ctrl-C during the imports below is one line)

# isort: on
import glob
import sys
import warnings
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError

from mnist_lab import CONF_DIR, NUM_CLASSES
from mnist_lab.cli.hydra_errors import hydra_errors_as_sentences
from mnist_lab.cli.quick_exit import skip_final_collection
from mnist_lab.data.mnist_arrays import MEAN, STD  # not the data module: no Lightning to import
from mnist_lab.records.checkpoint_loading import HOW_TO_PASS, buildable_setting, load_checkpoint, pick_device

FIELD, BOX = 28, 20  # MNIST: a 28x28 field, the digit fitted in a 20x20 box
INK_THRESHOLD = 0.2  # fraction of the darkest-to-lightest range that counts as ink, for the crop


class ImageError(ValueError):
    """An image that cannot be read, or holds no digit."""


def grayscale(image: Image.Image) -> np.ndarray:
    """Float array in [0, 1]; transparent pixels count as white paper."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        paper = Image.new("RGBA", image.size, "white")
        image = Image.alpha_composite(paper, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.float32) / 255


def mnist_like(image: Image.Image, name: str = "image") -> np.ndarray:
    """A 28x28 float array in [0, 1], bright ink on black, centred by mass like MNIST."""
    gray = grayscale(image)
    border = np.concatenate([gray[0], gray[-1], gray[:, 0], gray[:, -1]])
    paper = float(np.median(border))
    if paper > 0.5:  # dark ink on light paper: MNIST is light ink on black
        gray, paper = 1 - gray, 1 - paper
    ink = np.clip(gray - paper, 0, None)
    if ink.max() < 0.1:
        raise ImageError(
            f"{name} looks blank (no stroke differs from the background); "
            "pass an image with one dark or light digit on a plain background."
        )
    ink /= ink.max()
    rows, cols = np.nonzero(ink > INK_THRESHOLD)
    crop = ink[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]

    height, width = crop.shape
    scale = BOX / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    digit = np.asarray(Image.fromarray(crop).resize(size, Image.Resampling.LANCZOS))
    digit = np.clip(digit, 0, None)
    digit /= digit.max()

    # Put the centre of mass at the field's centre (index 14, as in MNIST), keeping it inside.
    ys, xs = np.indices(digit.shape)
    mass = digit.sum()
    top = int(np.clip(round(FIELD / 2 - (ys * digit).sum() / mass), 0, FIELD - digit.shape[0]))
    left = int(np.clip(round(FIELD / 2 - (xs * digit).sum() / mass), 0, FIELD - digit.shape[1]))
    field = np.zeros((FIELD, FIELD), dtype=np.float32)
    field[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
    return field


def load_images(paths: list[Path], normalize: bool = True) -> torch.Tensor:
    """(N, 1, 28, 28) batch in [0, 1], standardized if ``normalize``: as the model saw MNIST."""
    fields = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)  # an error, not two lines
                with Image.open(path) as image:
                    fields.append(mnist_like(image, str(path)))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageError(
                f"{path} is too large to open safely (more than {Image.MAX_IMAGE_PIXELS:,} pixels); "
                "scale it down to a few hundred pixels a side, as a digit needs no more."
            ) from None
        except (UnidentifiedImageError, OSError) as error:
            raise ImageError(
                f"{path} is not an image Pillow can read ({error}); pass PNG, JPEG or another common format."
            ) from None
    x = torch.from_numpy(np.stack(fields)).unsqueeze(1)
    return (x - MEAN) / STD if normalize else x


def image_paths(pattern: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
    if not paths:
        raise ImageError(
            f"images={pattern!r} matches no files; give a file or a quoted glob "
            "such as images='digits/*.png' (relative to the current directory)."
        )
    return paths


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    for key in ("ckpt_path", "images"):
        if OmegaConf.is_missing(cfg, key):
            sys.exit(
                f"error: {key}= is missing; usage: python -m mnist_lab.predict "
                f"ckpt_path=<run dir or .ckpt> images='digits/*.png' ({HOW_TO_PASS})."
            )
    if not isinstance(cfg.top, int) or not 1 <= cfg.top <= NUM_CLASSES:
        sys.exit(f"error: top={cfg.top} is not how many digits to list; use a whole number from 1 to 10.")
    try:
        device = pick_device(cfg.device)
        paths = image_paths(str(cfg.images))
        pixels = load_images(paths, normalize=False)  # bad images are reported before the checkpoint
        _, config, net, _ = load_checkpoint(cfg.ckpt_path, device, buildable_setting(cfg))
        x = (pixels - MEAN) / STD if config["data"].get("normalize", True) else pixels
        x = x.to(device)
    except ValueError as error:  # CheckpointError, ImageError and pick_device's are ValueErrors
        sys.exit(f"error: {error}")
    with torch.inference_mode():
        probs = net(x).softmax(dim=1).cpu()
    top_p, top_digit = probs.topk(cfg.top, dim=1)
    width = max(len(str(p)) for p in paths)
    for path, digits, ps in zip(paths, top_digit.tolist(), top_p.tolist(), strict=True):
        ranked = "  ".join(f"{d}: {p:6.1%}" for d, p in zip(digits, ps, strict=True))
        print(f"{str(path):<{width}}  {digits[0]}   ({ranked})")


if __name__ == "__main__":
    skip_final_collection()
    with hydra_errors_as_sentences():
        main()
