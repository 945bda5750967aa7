"""Which training step a run takes, and the optimizer built for it.

``make_step`` picks the kind of ``step.Step`` from plain values (net, loss, optimizer factory,
device, the ``step.cuda_graph`` setting, and what the trainer says: how many devices, which
precision), builds the optimizer that kind needs, and says why the CUDA graph is off where one
was asked for or expected. It knows nothing of Lightning: ``Classifier.configure_optimizers``
passes it the trainer's facts. A new kind of step is chosen here.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from mnist_lab.run.cuda_graph import GraphStep, graph_off, graph_optimizer_kwargs, graph_unsupported_reason
from mnist_lab.run.step import EagerStep, Step, eager_optimizer_kwargs, skip_capture_check


def make_step(
    net: nn.Module,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    make_optimizer: Callable,
    device: torch.device,
    cuda_graph: str = "auto",
    make_scheduler: Callable | None = None,
    world_size: int = 1,
    precision: str | int = "32-true",
    backward: Callable[[torch.Tensor], None] | None = None,
    say: Callable[[str], None] = print,
) -> tuple[Step, torch.optim.Optimizer]:
    """The training step and the optimizer (over the net's parameters) it steps.

    A ``cuda_graph.GraphStep`` if ``cuda_graph`` is not "off" and ``graph_unsupported_reason``
    finds nothing against it; else a ``step.EagerStep`` with ``backward`` (a LightningModule
    passes ``manual_backward``, so that a strategy's gradient sync and a precision plugin take
    part). Why the graph is off is said (``say``) when ``cuda_graph`` is "on" (then it raises
    instead, ``graph_off``) or "auto" on a CUDA device; a graph that fails later says it too.
    """
    graph = wants_graph(make_optimizer, make_scheduler, device, cuda_graph, world_size, precision, say)
    kwargs = graph_optimizer_kwargs(make_optimizer) if graph else eager_optimizer_kwargs(make_optimizer, device)
    optimizer = make_optimizer(net.parameters(), **kwargs)
    if device.type == "cpu":
        skip_capture_check(optimizer)
    if graph:
        fallback = functools.partial(graph_off, cuda_graph, say=say)
        return GraphStep(net, loss, optimizer, device, fallback), optimizer
    return EagerStep(net, loss, optimizer, backward=backward), optimizer


def wants_graph(
    make_optimizer: Callable,
    make_scheduler: Callable | None,
    device: torch.device,
    cuda_graph: str,
    world_size: int = 1,
    precision: str | int = "32-true",
    say: Callable[[str], None] = print,
) -> bool:
    """Whether to capture the step; says why not where a graph was asked for or expected."""
    reason = graph_unsupported_reason(make_optimizer, make_scheduler, device, world_size, precision)
    if reason and cuda_graph != "off" and (cuda_graph == "on" or device.type == "cuda"):
        graph_off(cuda_graph, reason, say=say)
    return reason is None and cuda_graph != "off"
