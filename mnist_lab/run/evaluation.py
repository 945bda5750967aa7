"""A net's test: loss (mean over images), accuracy and confusion matrix over a loader's batches.
``evaluate`` prints it for a checkpoint; a packed job records its test with it."""

from __future__ import annotations

import torch
from torch import nn

from mnist_lab.tracking.tensorboard_images import batched_logits, confusion_matrix


def evaluate(net: nn.Module, loss: nn.Module, batches, device: torch.device) -> dict:
    """Test loss (mean over images), accuracy and the confusion matrix."""
    loss_sum, count = torch.zeros((), device=device), 0

    def scored():
        nonlocal loss_sum, count
        for logits, _, y in batched_logits(net, batches, device):
            loss_sum += loss(logits, y) * len(y)
            count += len(y)
            yield logits, y

    counts = confusion_matrix(scored(), device).cpu()
    return {
        "test_loss": float(loss_sum) / count,
        "test_acc": float(counts.trace() / counts.sum()),
        "confusion": counts,
    }
