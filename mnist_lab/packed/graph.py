"""A pack's training step captured as one CUDA graph, as ``cuda_graph.GraphStep`` captures a solo
run's: ``PackedGraphStep``; and ``make_packed_step``, which picks it or the eager ``PackedStep``.

On a GPU a pack's eager step is many small kernels (per-job losses, the written-out update of every
parameter); replayed as one graph they cost one launch. What is captured is one call of the eager
``PackedStep`` (the pack's one step body); the capture, replay, self-check against the eager step
and fall-back are ``GraphStep``'s; what differs is what a pack holds:

- the optimizer (``PackedOptimizer``) steps through its written-out update, whose hyperparameters
  and step count are device tensors that schedules and freezes change in place (so a graph follows
  one-cycle's momentum too, which a solo graph cannot: ``step_factory.graph_unsupported_reason``);
  the host's step count moves on each replay (``count_replayed_step``);
- each job's dropout stream is its own generator (``PackedNet.generators``), registered with the
  graph before capture and saved and put back around the warm-up like the device's default one;
- the loss and the number correct are per job, ``[M]``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from mnist_lab.packed.layers import PackedDropout
from mnist_lab.packed.nets import PackedNet
from mnist_lab.packed.optimizer import PackedOptimizer
from mnist_lab.packed.step import PackedLoss, PackedStep
from mnist_lab.run.cuda_graph import GraphStep
from mnist_lab.run.step_factory import graph_off, wants_graph


def packed_graph_unsupported_reason(device: torch.device) -> str | None:
    """None if a pack's step can be captured on ``device``, else why not. Every optimizer,
    schedule and loss a pack takes can (``packed.groups.why_solo`` has refused the others)."""
    return None if device.type == "cuda" else "the pack is not on a CUDA device"


def make_packed_step(
    net: PackedNet,
    loss: PackedLoss,
    optimizer: PackedOptimizer,
    device: torch.device,
    cuda_graph: str = "auto",
    say: Callable[[str], None] = print,
) -> PackedStep | PackedGraphStep:
    """The pack's step for ``step.cuda_graph`` (the jobs share it): a ``PackedGraphStep`` unless
    it is "off" or the device cannot capture (``step_factory.wants_graph`` decides, and says why
    the graph is off, as for a solo run)."""
    if wants_graph(packed_graph_unsupported_reason(device), cuda_graph, device, say):
        return PackedGraphStep(net, loss, optimizer, device, functools.partial(graph_off, cuda_graph, say=say))
    return PackedStep(net, loss, optimizer)


class PackedGraphStep(GraphStep):
    """``PackedStep`` captured once, on its first batch, and replayed for every batch of that shape
    (``GraphStep``; the ragged last batch of an epoch steps eagerly)."""

    EAGER = PackedStep

    def _prepare(self) -> None:
        # The written-out update reads its hyperparameters on the device; the CPU's grouping of
        # models by their values reads them back on the host, which a capture forbids.
        self.optimizer.grouped = False
        self.net.start_dropout_streams(self.device)

    def _replay(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A replay runs no Python of the net's forward: streams reseeded at an epoch's start
        # are started here, in place, in the generators the graph draws from.
        self.net.start_dropout_streams(self.device)
        out = super()._replay(x, y)
        self.optimizer.count_replayed_step()
        return out

    def _state_tensors(self) -> list[torch.Tensor]:
        tensors = [*self.net.parameters(), *self.net.buffers(), self.optimizer.step_count]
        for state in self.optimizer.state:
            tensors += list(state.values())
        return tensors

    def _generators(self) -> list[torch.Generator]:
        dropout = any(isinstance(module, PackedDropout) for module in self.net.modules())
        return self.net.generators if dropout else []  # a net without dropout draws from none

    def _other_state(self) -> tuple[list[torch.Tensor], int]:
        """The jobs' dropout streams and the host's step count."""
        return [g.get_state() for g in self.net.generators], self.optimizer.steps

    def _set_other_state(self, state: tuple[list[torch.Tensor], int]) -> None:
        streams, steps = state
        for generator, saved in zip(self.net.generators, streams, strict=True):
            generator.set_state(saved)
        self.optimizer.steps = steps
