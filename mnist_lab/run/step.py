"""The training step as a unit: ``step(x, y) -> (loss, correct)``.

A step does one optimizer step on one batch and returns the batch's loss and its number of
correct predictions as tensors on the device: it never waits for the device (no host sync),
so the caller decides when to look at the numbers. A step is built from a net, a loss and an
optimizer (and a device, for the graph step), never from the LightningModule that uses it.

Kinds of step, all with the ``Step`` interface:

- ``EagerStep`` (here): forward, loss, backward, optimizer step, as written;
- ``GraphStep`` (``cuda_graph.py``): an ``EagerStep`` call captured once as a CUDA graph and
  replayed.

``step_factory.make_step`` picks one. A pack of jobs trained at once steps through the same
interface with a model dimension in front (``packed.step.PackedStep``, and on a GPU
``packed.graph.PackedGraphStep``, a ``GraphStep``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from torch import nn

# On CPU their fused kernel updates each tensor in one pass instead of six: a batch-1 MLP step
# is about a third faster (docs/performance.md, "fused Adam on CPU").
FUSED_ON_CPU = (torch.optim.Adam, torch.optim.AdamW)


class Step(Protocol):
    """One optimizer step on one batch: ``(loss, correct)``, both on the device."""

    # True if the step keeps writing the same ``.grad`` tensors between calls (a captured
    # graph holds their addresses): whoever frees gradients must zero them in place instead.
    keeps_grads: bool

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


def plain_backward(loss: torch.Tensor) -> None:
    loss.backward()


class EagerStep:
    """Zero the gradients, forward, loss, backward, optimizer step.

    Args:
        net: maps a batch of images to logits (B, classes).
        loss: ``loss(logits, labels)`` -> scalar tensor.
        optimizer: a torch optimizer over the net's parameters (anything with ``zero_grad``
            and ``step``).
        backward: ``backward(loss)``; ``loss.backward()`` by default. A LightningModule
            passes its ``manual_backward``, so that its strategy (DDP's gradient sync) and
            precision plugin take part.
        keeps_grads: zero the gradients in place instead of freeing them (see ``Step``).
    """

    def __init__(
        self,
        net: nn.Module,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        backward: Callable[[torch.Tensor], None] | None = None,
        keeps_grads: bool = False,
    ):
        self.net, self.loss, self.optimizer = net, loss, optimizer
        self.backward = backward or plain_backward
        self.keeps_grads = keeps_grads

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The one body of a solo step: ``GraphStep`` captures this very call. Gradients are
        # zeroed first, so that a captured step clears whatever ran before it (the eager ragged
        # batch) inside the graph.
        self.optimizer.zero_grad(set_to_none=not self.keeps_grads)
        logits = self.net(x)
        loss = self.loss(logits, y)
        self.backward(loss)
        self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(dim=1) == y).sum()


def ready_for_eager(optimizer: torch.optim.Optimizer) -> None:
    """Each group's flags (``capturable``, ``fused``, ``foreach``) as the optimizer was built,
    and its lr a number: a checkpoint written on the CUDA-graph path brings ``capturable=True``
    and a tensor lr, which eager Adam refuses on the CPU."""
    flags = {key: optimizer.defaults[key] for key in ("capturable", "fused", "foreach") if key in optimizer.defaults}
    for group in optimizer.param_groups:
        group.update(flags)
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = float(group["lr"])


def eager_optimizer_kwargs(make_optimizer: Callable, device: torch.device) -> dict:
    """Extra optimizer arguments for the eager step: Adam's fused kernel on CPU, unless the
    config chose ``fused`` itself."""
    optimizer_class = getattr(make_optimizer, "func", make_optimizer)
    chosen = getattr(make_optimizer, "keywords", {})
    if device.type == "cpu" and optimizer_class in FUSED_ON_CPU and "fused" not in chosen:
        return {"fused": True}
    return {}


def skip_capture_check(optimizer: torch.optim.Optimizer) -> None:
    """On CPU, drop the check Adam, AdamW and Adadelta make at every step for an ongoing graph
    capture: it calls ``torch.cuda.is_available()``, which under Lightning (it sets
    PYTORCH_NVML_BASED_CUDA_CHECK=1) is an NVML query, ~60 us a step on a CUDA build of torch
    without a GPU: half of a batch-1 MLP step. Nothing is ever captured on the CPU."""
    if hasattr(optimizer, "_accelerator_graph_capture_health_check"):
        optimizer._accelerator_graph_capture_health_check = lambda: None
