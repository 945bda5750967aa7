"""Losses a study compares. Cross-entropy is torch's own; MSE and L1 compare the model's
softmax probabilities (``target="probs"``, the classic set-up) or its raw outputs
(``target="logits"``) with one-hot labels. Accuracy is always the argmax, whatever the loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DISTANCES = {"mse": F.mse_loss, "l1": F.l1_loss}
TARGETS = ("probs", "logits")


class OneHotLoss(nn.Module):
    """``distance(softmax(logits) or logits, one_hot(labels))``, averaged over all entries."""

    def __init__(self, distance: str = "mse", target: str = "probs"):
        super().__init__()
        if distance not in DISTANCES:
            raise ValueError(f"unknown loss distance {distance!r}; choose one of {', '.join(DISTANCES)}.")
        if target not in TARGETS:
            raise ValueError(f"loss.target={target!r} is not valid; choose 'probs' or 'logits'.")
        self.distance, self.target = DISTANCES[distance], target

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        outputs = logits.softmax(dim=1) if self.target == "probs" else logits
        # scatter_, not F.one_hot: on CPU one_hot checks the labels' range with two host syncs a
        # step, and a host sync cannot be captured in a CUDA graph.
        one_hot = torch.zeros_like(outputs).scatter_(1, labels.unsqueeze(1), 1.0)
        return self.distance(outputs, one_hot)
