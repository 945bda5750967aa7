"""Which training step a run takes, the optimizer built for it, and why the CUDA graph is off.

``make_step`` picks the kind of ``step.Step`` from plain values (net, loss, optimizer factory,
device, the ``step.cuda_graph`` setting, and what the trainer says: how many devices, which
precision), builds the optimizer that kind needs, and says why the CUDA graph is off where one
was asked for or expected. It knows nothing of Lightning: ``Classifier.configure_optimizers``
passes it the trainer's facts. A new kind of step is chosen here.

``wants_graph`` is the one decision between a captured and an eager step, for a solo run
(``graph_unsupported_reason``) and for a pack (``packed.graph.make_packed_step``, with its own
reason): each road says why a graph cannot run, and ``wants_graph`` says it or raises.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn

from mnist_lab.run.cuda_graph import GraphStep, graph_optimizer_kwargs
from mnist_lab.run.step import EagerStep, Step, eager_optimizer_kwargs, skip_capture_check

# Optimizers whose step can run inside a graph: built with ``capturable=True`` (SGD: ``fused=True``),
# they keep their state and a tensor lr on the device.
CAPTURABLE = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adadelta,
    torch.optim.SGD,
)


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
    part). Why the graph is off is said (``wants_graph``); a graph that fails later says it too.
    """
    reason = graph_unsupported_reason(make_optimizer, make_scheduler, device, world_size, precision)
    graph = wants_graph(reason, cuda_graph, device, say)
    kwargs = graph_optimizer_kwargs(make_optimizer) if graph else eager_optimizer_kwargs(make_optimizer, device)
    optimizer = make_optimizer(net.parameters(), **kwargs)
    if device.type == "cpu":
        skip_capture_check(optimizer)
    if graph:
        fallback = functools.partial(graph_off, cuda_graph, say=say)
        return GraphStep(net, loss, optimizer, device, fallback), optimizer
    return EagerStep(net, loss, optimizer, backward=backward), optimizer


def wants_graph(reason: str | None, cuda_graph: str, device: torch.device, say: Callable[[str], None] = print) -> bool:
    """Whether to capture the step, given ``reason`` (why it cannot be, None if it can) and the
    ``step.cuda_graph`` setting. Why not is said where a graph was asked for ("on": raised
    instead, ``graph_off``) or expected ("auto" on a CUDA device); "off" says nothing."""
    if reason and cuda_graph != "off" and (cuda_graph == "on" or device.type == "cuda"):
        graph_off(cuda_graph, reason, say=say)
    return reason is None and cuda_graph != "off"


def graph_off(cuda_graph: str, reason: str, say: Callable[[str], None] = print) -> None:
    """Say why the step runs eagerly; with ``cuda_graph`` "on", stop the run instead."""
    if cuda_graph == "on":
        raise ValueError(f"step.cuda_graph=on but {reason}; use step.cuda_graph=auto.")
    say(f"CUDA graph off: {reason}; using the eager step.")


def graph_unsupported_reason(
    make_optimizer: Callable,
    make_scheduler: Callable | None,
    device: torch.device,
    world_size: int = 1,
    precision: str | int = "32-true",
) -> str | None:
    """None if a solo run's training step can be captured, else why not (a phrase for a log line)."""
    if world_size > 1:
        return "training on several devices (gradients are all-reduced outside the graph)"
    if precision not in ("32-true", "32", 32):
        return f"trainer.precision={precision} (the graph step runs in float32)"
    optimizer_class = getattr(make_optimizer, "func", make_optimizer)
    if optimizer_class not in CAPTURABLE:
        return f"{getattr(optimizer_class, '__name__', optimizer_class)} cannot run inside a CUDA graph"
    if _cycles_momentum(make_scheduler):
        return "the scheduler cycles momentum (cycle_momentum=true), which the captured step reads as a constant"
    if device.type != "cuda":
        return "the model is not on a CUDA device"
    return None


def _cycles_momentum(make_scheduler) -> bool:
    """One-cycle and cyclic schedulers can also move momentum/betas each step: plain Python
    numbers that a captured step has frozen (only lr lives in a device tensor)."""
    if make_scheduler is None:
        return False
    scheduler_class = getattr(make_scheduler, "func", make_scheduler)
    try:
        parameter = inspect.signature(scheduler_class).parameters.get("cycle_momentum")
    except (TypeError, ValueError):
        return False
    if parameter is None:
        return False
    return bool(getattr(make_scheduler, "keywords", {}).get("cycle_momentum", parameter.default))
