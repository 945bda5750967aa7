"""TensorBoard images: what people look at to judge a model.

- ``train/samples``: a grid of training images, once, at the start of training;
- ``val/misclassified``: after each validation, the digits the model gets wrong among the
  first ``examine`` validation images, each captioned "<predicted> (true <label>)";
- ``test/confusion_matrix``: after the test, the test set's confusion matrix.

The mistakes are selected on the device with no host sync (a stable sort puts the wrong
predictions first); each validation costs one extra forward pass over ``examine`` images,
the same ones every time, so the grids show which mistakes get fixed. The captioned figures
are drawn once, at the end of fitting, one per validation step, straight into pixels
(``tracking.drawn_images``: a few milliseconds each, no matplotlib).
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.compat.proto.summary_pb2 import Summary
from torch.utils.tensorboard import SummaryWriter
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from mnist_lab import NUM_CLASSES
from mnist_lab.tracking.drawn_images import GRID_COLUMNS, confusion_matrix_image, mistakes_image, to_pixels

__all__ = ["GRID_COLUMNS", "TensorBoardImages", "confusion_matrix", "first_mistakes", "log_image", "to_pixels"]


def batched_logits(net: torch.nn.Module, batches: Iterable, device: torch.device, max_images=None):
    """Yield (logits, x, y) for each (x, y) batch (the first ``max_images`` images, if given),
    with ``net`` in eval mode and no autograd."""
    was_training = net.training
    net.eval()
    seen = 0
    # the net's own dtype: float64 or bfloat16 under trainer.precision=64-true or bf16-true
    # (Lightning converts the batches it hands to the steps, not these)
    dtype = next(net.parameters(), torch.empty(0)).dtype  # float32 for a net without parameters
    try:
        with torch.inference_mode():
            for x, y in batches:
                if max_images is not None:
                    if seen >= max_images:
                        break
                    x, y = x[: max_images - seen], y[: max_images - seen]
                seen += len(y)
                x, y = x.to(device, dtype), y.to(device)
                yield net(x), x, y
    finally:
        net.train(was_training)


def first_mistakes(net, batches, device, limit: int, examine=None) -> tuple[torch.Tensor, ...]:
    """Up to ``limit`` (x, predicted, true, is_wrong) rows of the first ``examine`` images,
    mistakes first, in dataset order.

    Stays on the device: no ``nonzero`` or ``.item()``, so no host sync. Rows past the number
    of mistakes are correct predictions, flagged by ``is_wrong`` being False.
    """
    kept = []
    for logits, x, y in batched_logits(net, batches, device, examine):
        pred = logits.argmax(dim=1)
        rows = torch.argsort((pred == y).to(torch.uint8), stable=True)[:limit]
        kept.append((x[rows], pred[rows], y[rows], pred[rows] != y[rows]))
    x, pred, y, wrong = (torch.cat(parts) for parts in zip(*kept, strict=True))
    rows = torch.argsort((~wrong).to(torch.uint8), stable=True)[:limit]
    return x[rows], pred[rows], y[rows], wrong[rows]


def log_image(writer, tag: str, image: Image.Image, step: int) -> None:
    """Write a drawn image (``tracking.drawn_images``) to TensorBoard under ``tag`` at ``step``, as
    ``add_image`` writes one, but encoded once, fast (zlib level 1): ``add_image`` would first turn
    the pixels into floats and back and resample them (Lanczos, even at scale 1), which costs more
    than drawing them."""
    if not isinstance(writer, SummaryWriter):  # another writer (tensorboardX): its own way
        writer.add_image(tag, np.asarray(image), step, dataformats="HWC")
        return
    png = io.BytesIO()
    image.save(png, format="png", compress_level=1)
    encoded = Summary.Image(height=image.height, width=image.width, colorspace=3, encoded_image_string=png.getvalue())
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=encoded)]), step)


def confusion_matrix(scored: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> torch.Tensor:
    """Counts per (true, predicted) digit over (logits, labels) batches, on ``device``."""
    metric = MulticlassConfusionMatrix(num_classes=NUM_CLASSES, validate_args=False).to(device)
    for logits, y in scored:
        metric.update(logits, y)
    return metric.compute()


class TensorBoardImages(L.Callback):
    """Writes the images described in this module's docstring to the TensorBoard logger.

    Args:
        max_images: how many training samples and misclassified digits each grid shows.
        examine: how many validation images (the first ones) are searched for mistakes; the
            extra forward pass costs about examine / len(val set) of a validation.
    """

    def __init__(self, max_images: int = 32, examine: int = 2000):
        self.max_images, self.examine = max_images, examine
        self.mistakes: list[tuple[int, tuple[torch.Tensor, ...]]] = []  # (global step, rows)

    @staticmethod
    def writer(trainer: L.Trainer):
        if not trainer.is_global_zero or trainer.sanity_checking:
            return None
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        return loggers[0].experiment if loggers else None

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None or trainer.current_epoch > 0:  # a resumed run wrote it already
            return
        x, _ = next(iter(trainer.train_dataloader))
        pixels = to_pixels(x[: self.max_images].float().cpu())
        grid = make_grid(pixels, nrow=GRID_COLUMNS, pad_value=1.0)
        writer.add_image("train/samples", grid, 0)

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.writer(trainer) is None:
            return
        val = trainer.val_dataloaders
        rows = first_mistakes(module, val, module.device, self.max_images, self.examine)
        self.mistakes.append((trainer.global_step, rows))

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        for step, rows in self.mistakes if writer is not None else ():
            x, pred, true, wrong = (t.cpu() for t in rows)
            if wrong.any():
                log_image(writer, "val/misclassified", mistakes_image(x[wrong], pred[wrong], true[wrong]), step)
        self.mistakes.clear()
        if writer is not None:
            writer.flush()

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception) -> None:
        self.on_fit_end(trainer, module)  # an interrupted run keeps the grids of its validations

    def on_test_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        writer = self.writer(trainer)
        if writer is None and trainer.world_size == 1:
            return
        # Under DDP every process computes it: the metric sums the processes' shares of the
        # test set (a collective, which would wait forever for a process that skipped it).
        scored = ((logits, y) for logits, _, y in batched_logits(module, trainer.test_dataloaders, module.device))
        confusion = confusion_matrix(scored, module.device)
        if writer is None:
            return
        image = confusion_matrix_image(confusion, "test set: true vs predicted digit")
        log_image(writer, "test/confusion_matrix", image, trainer.global_step)
        writer.flush()
