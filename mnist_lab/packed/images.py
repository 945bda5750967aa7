"""A packed job's TensorBoard images, as ``tensorboard_images.TensorBoardImages`` writes its solo
run's: ``train/samples`` once at the start (the first images of its epoch-0 batch order),
``val/misclassified`` for each epoch's validation (drawn at the end of training, each at the
epoch's global step), ``test/confusion_matrix`` after the test. Written only where the solo run
would write them: ``callbacks.images`` on and a TensorBoard logger among the job's loggers.
"""

from __future__ import annotations

import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig
from torchvision.utils import make_grid

from mnist_lab.data.datamodule import SAMPLES_PER_CALL, DeviceBatches
from mnist_lab.tracking.drawn_images import GRID_COLUMNS, confusion_matrix_image, mistakes_image, to_pixels
from mnist_lab.tracking.tensorboard_images import first_mistakes, log_image


class PackedImages:
    """The images of one packed job; ``writer`` is its TensorBoard logger's SummaryWriter."""

    def __init__(self, settings: DictConfig, writer):
        self.max_images, self.examine = settings.get("max_images", 32), settings.get("examine", 2000)
        self.writer = writer
        self.mistakes: list[tuple[int, tuple[torch.Tensor, ...]]] = []  # (global step, rows)

    @classmethod
    def for_job(cls, cfg: DictConfig, loggers: list) -> PackedImages | None:
        settings = (cfg.get("callbacks") or {}).get("images")
        tensorboard = [lg for lg in loggers if isinstance(lg, TensorBoardLogger)]
        return cls(settings, tensorboard[0].experiment) if settings is not None and tensorboard else None

    def samples(self, batches: DeviceBatches) -> None:
        """``train/samples``: the first ``max_images`` images of the solo run's first training
        item, which holds ``SAMPLES_PER_CALL // batch_size`` batches (at least one)."""
        first_item = batches.batch_size * max(1, SAMPLES_PER_CALL // batches.batch_size)
        rows = batches.order()[:first_item][: self.max_images]
        grid = make_grid(to_pixels(batches.x.index_select(0, rows).float().cpu()), nrow=GRID_COLUMNS, pad_value=1.0)
        self.writer.add_image("train/samples", grid, 0)

    def validated(self, net: torch.nn.Module, val_x, val_y, eval_batch_size: int, global_step: int) -> None:
        """After an epoch's validation: the mistakes among the first ``examine`` images."""
        batches = DeviceBatches(val_x, val_y, eval_batch_size)
        rows = first_mistakes(net, batches, val_x.device, self.max_images, self.examine)
        self.mistakes.append((global_step, rows))

    def finish(self, confusion: torch.Tensor | None = None, global_step: int = 0) -> None:
        """The ``val/misclassified`` figures, and the test's confusion matrix if there was a test."""
        for step, rows in self.mistakes:
            x, pred, true, wrong = (t.cpu() for t in rows)
            if wrong.any():
                log_image(self.writer, "val/misclassified", mistakes_image(x[wrong], pred[wrong], true[wrong]), step)
        self.mistakes.clear()
        if confusion is not None:
            image = confusion_matrix_image(confusion, "test set: true vs predicted digit")
            log_image(self.writer, "test/confusion_matrix", image, global_step)
        self.writer.flush()
