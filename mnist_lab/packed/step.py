"""The training step of a pack: M jobs' forward, losses, backward and optimizer step as one.

``PackedStep(x, y) -> (loss [M], correct [M])`` is the solo run's ``step.Step`` interface
(``step(x, y) -> (loss, correct)``, on the device, no host sync) with a model dimension in front:
``x [M, B, 1, 28, 28]`` and ``y [M, B]`` hold each job's own batch, from its own seeded
permutation (``PackedBatches``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mnist_lab.data.datamodule import DeviceBatches
from mnist_lab.losses import DISTANCES, OneHotLoss
from mnist_lab.packed.nets import PackedNet
from mnist_lab.packed.optimizer import PackedOptimizer


def loss_setting(loss: nn.Module) -> tuple:
    """What a solo loss computes, as a hashable key; ValueError for a loss that cannot pack."""
    if type(loss) is nn.CrossEntropyLoss:
        if loss.weight is not None or loss.reduction != "mean":
            raise ValueError("a cross-entropy loss with class weights or another reduction cannot be packed")
        return ("ce", loss.label_smoothing)
    if type(loss) is OneHotLoss:
        distance = next(name for name, fn in DISTANCES.items() if fn is loss.distance)
        return (distance, loss.target)
    raise ValueError(f"{type(loss).__name__} cannot be packed")


def _per_model_loss(setting: tuple, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The solo loss of each model's batch: ``logits [G, B, 10]``, ``y [G, B]`` -> ``[G]``."""
    kind, option = setting
    if kind == "ce":
        # F.cross_entropy as the solo run computes it (its log_softmax kernel): a loss written
        # out as logsumexp - x_y is 2x faster on a CPU for 16 x 64 images but rounds differently,
        # and near a loss of 0 that is more than 1e-5 of it.
        per_image = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none", label_smoothing=option)
        return per_image.view(y.shape).mean(dim=1)
    outputs = logits.softmax(dim=-1) if option == "probs" else logits
    one_hot = torch.zeros_like(outputs).scatter_(-1, y.unsqueeze(-1), 1.0)  # as OneHotLoss: no host sync
    return DISTANCES[kind](outputs, one_hot, reduction="none").mean(dim=(1, 2))


class PackedLoss(nn.Module):
    """Each job's own loss (ce/mse/l1 and its target): ``(logits [M, B, 10], y [M, B]) -> [M]``.
    Jobs with the same loss are computed together, one group per distinct loss."""

    def __init__(self, losses: Sequence[nn.Module]):
        super().__init__()
        settings = [loss_setting(loss) for loss in losses]
        self.groups = [
            (setting, [i for i, s in enumerate(settings) if s == setting]) for setting in dict.fromkeys(settings)
        ]
        for n, (_, members) in enumerate(self.groups):
            self.register_buffer(f"members_{n}", torch.tensor(members), persistent=False)
        order = [i for _, members in self.groups for i in members]
        self.register_buffer("inverse", torch.argsort(torch.tensor(order)), persistent=False)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if len(self.groups) == 1:
            return _per_model_loss(self.groups[0][0], logits, y)
        parts = []
        for n, (setting, _) in enumerate(self.groups):
            members = getattr(self, f"members_{n}")
            parts.append(_per_model_loss(setting, logits.index_select(0, members), y.index_select(0, members)))
        return torch.cat(parts).index_select(0, self.inverse)


class PackedStep:
    """Zero the gradients, forward, per-job losses, backward, per-job optimizer step; returns
    ``(loss [M], correct [M])`` on the device. The jobs' losses are summed for one backward pass:
    no parameter is shared, so each job's gradients are those of its own loss.

    Args:
        keeps_grads: zero the gradients in place instead of freeing them (a captured graph
            holds their addresses), as ``step.Step.keeps_grads``.
    """

    def __init__(self, net: PackedNet, loss: PackedLoss, optimizer: PackedOptimizer, keeps_grads: bool = False):
        self.net, self.loss, self.optimizer = net, loss, optimizer
        self.keeps_grads = keeps_grads

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The one body of a pack's step: ``PackedGraphStep`` captures this very call (gradients
        # zeroed first, as ``step.EagerStep`` does, so a captured step clears them inside the graph).
        self.optimizer.zero_grad(set_to_none=not self.keeps_grads)
        logits = self.net(x)
        losses = self.loss(logits, y)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach(), (logits.detach().argmax(dim=-1) == y).sum(dim=1)


class PackedBatches:
    """Each job's training batches, side by side: job i's batch k is the k-th batch its solo run's
    ``DeviceBatches`` gives (the permutation seeded by its own ``seed`` and the epoch); yields
    ``(x [M, B, ...], y [M, B])``. The loaders must agree on data, batch size and ``drop_last``."""

    def __init__(self, loaders: Sequence[DeviceBatches]):
        first = loaders[0]
        setting = (first.batch_size, first.drop_last, first.world_size)
        if any(ld.x is not first.x or (ld.batch_size, ld.drop_last, ld.world_size) != setting for ld in loaders):
            raise ValueError("the jobs of a pack must share training data, batch size and drop_last")
        self.loaders = loaders
        self.x, self.y, self.batch_size = first.x, first.y, first.batch_size

    @property
    def batches(self) -> int:
        return self.loaders[0].batches

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        orders = torch.stack([loader.order() for loader in self.loaders])  # [M, rows]
        used = min(self.batches * self.batch_size, orders.shape[1])
        for i in range(0, used, self.batch_size):
            rows = orders[:, i : i + self.batch_size]  # [M, B]; index_select as DeviceBatches
            flat = rows.flatten()
            yield self.x.index_select(0, flat).unflatten(0, rows.shape), self.y.index_select(0, flat).view(rows.shape)
