"""TensorBoard images: what people look at to judge a model.

- ``train/samples``: a grid of training images, once, at the start of training;
- ``val/misclassified``: after each validation, the digits the model gets wrong among the
  first ``examine`` validation images, each captioned "<predicted> (true <label>)";
- ``test/confusion_matrix``: after the test, the test set's confusion matrix.

The mistakes are selected on the device with no host sync (a stable sort puts the wrong
predictions first); each validation costs one extra forward pass over ``examine`` images,
the same ones every time, so the grids show which mistakes get fixed. The captioned figures
are drawn once, at the end of fitting, one per validation step.
"""

from __future__ import annotations

from collections.abc import Iterable

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib.figure import Figure
from torchmetrics.classification import MulticlassConfusionMatrix
from torchvision.utils import make_grid

from mnist_lab import NUM_CLASSES
from mnist_lab.data.datamodule import MEAN, STD

GRID_COLUMNS = 8


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


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Normalized images back to [0, 1] intensities."""
    return (x * STD + MEAN).clamp(0, 1)


def mistakes_figure(x: torch.Tensor, pred: torch.Tensor, true: torch.Tensor) -> Figure:
    """One image of the digits in a grid, each captioned "<predicted> (true <label>)" above it."""
    pad, side = 12, x.shape[-1]
    grid = make_grid(to_pixels(x.float().cpu()), nrow=GRID_COLUMNS, padding=pad, pad_value=1.0)
    columns = min(len(x), GRID_COLUMNS)
    figure = Figure(figsize=(grid.shape[2] / 60, grid.shape[1] / 60), dpi=120)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.imshow(grid[0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    for i, (p, t) in enumerate(zip(pred.tolist(), true.tolist(), strict=True)):
        row, col = divmod(i, columns)
        x_text, y_text = pad + col * (side + pad) + side / 2, pad + row * (side + pad) - 1.5
        ax.text(x_text, y_text, f"{p} (true {t})", ha="center", va="bottom", fontsize=7, color="crimson")
    return figure


def confusion_matrix_figure(confusion: torch.Tensor, title: str) -> Figure:
    """Counts per (true, predicted) pair as a labelled heat map."""
    counts = confusion.cpu().numpy()
    figure = Figure(figsize=(6, 5.4), dpi=100, layout="constrained")
    ax = figure.add_subplot()
    image = ax.imshow(counts, cmap="Blues")
    figure.colorbar(image, ax=ax, shrink=0.8)
    ax.set(xticks=range(NUM_CLASSES), yticks=range(NUM_CLASSES), xlabel="predicted", ylabel="true", title=title)
    threshold = counts.max() / 2
    for true, pred in zip(*counts.nonzero(), strict=True):
        n = counts[true, pred]
        ax.text(pred, true, str(n), ha="center", va="center", fontsize=7, color="white" if n > threshold else "black")
    return figure


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
                figure = mistakes_figure(x[wrong], pred[wrong], true[wrong])
                writer.add_figure("val/misclassified", figure, step)
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
        figure = confusion_matrix_figure(confusion, "test set: true vs predicted digit")
        writer.add_figure("test/confusion_matrix", figure, trainer.global_step)
        writer.flush()
