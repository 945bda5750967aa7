"""The whole training step (forward, loss, backward, optimizer step) captured once as a CUDA graph.

On the GPU a small eager step costs host time, not arithmetic: kernel launches, whatever the
batch size (docs/performance.md). Replaying a captured graph launches the step's hundreds of
kernels in one call. ``GraphStep`` is a ``step.Step``: what it captures is one call of its eager
step (``step.EagerStep``; a pack's ``PackedStep``), so the step's body is written once; here are
the capture, the replay, the self-check that compares a replay with an eager step, and the
fall-back to the eager step.

Capture needs fixed shapes, so the ragged last batch of an epoch (if any) runs eagerly on the
same parameters and optimizer state. Cases the graph cannot handle take the eager step from
the start; ``step_factory.graph_unsupported_reason`` names them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import nn

from mnist_lab.run.step import EagerStep


def graph_optimizer_kwargs(make_optimizer) -> dict:
    """Extra optimizer arguments a captured step needs: ``capturable=True`` where it exists.
    SGD has no such flag, and its default (foreach) step turns a tensor lr into a Python number,
    a host sync that capture forbids; its fused kernel reads lr on the device instead."""
    parameters = inspect.signature(getattr(make_optimizer, "func", make_optimizer)).parameters
    if "capturable" in parameters:
        return {"capturable": True}
    return {"fused": True, "foreach": False} if "fused" in parameters else {}


def ready_for_capture(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Put the optimizer in the shape a captured step needs, after a resumed checkpoint has
    replaced its param groups and state (a run saved eagerly brings ``capturable=False``, a
    float lr, and step counters on the CPU):

    - each group's flags (``capturable``, ``fused``, ``foreach``) as the optimizer was built;
    - each group's lr in a device tensor: the graph reads it there and schedulers change it in
      place (``fill_``), where a Python float would be frozen at capture;
    - every state tensor, step counters included, on the device.
    """
    flags = {key: optimizer.defaults[key] for key in ("capturable", "fused", "foreach") if key in optimizer.defaults}
    for group in optimizer.param_groups:
        group.update(flags)
        lr = group["lr"]
        if not isinstance(lr, torch.Tensor) or lr.device != device:
            group["lr"] = torch.tensor(float(lr), device=device)
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.device != device:
                state[key] = value.to(device)


def _release_failed_capture(pool) -> None:
    """When a capture fails, ``CUDAGraph.capture_end`` raises before it tells the caching
    allocator that the capture is over, and the allocator would keep routing to (and never
    free) the graph's memory pool for the rest of the process. End and release that pool, with
    the calls ``torch.cuda.use_mem_pool`` makes; either may already have happened."""
    device = torch.cuda.current_device()
    for release in (torch._C._cuda_endAllocateToPool, torch._C._cuda_releasePool):
        try:
            release(device, pool)
        except Exception:  # noqa: BLE001 - best effort: the run goes on eagerly either way
            pass


def _default_generator(device: torch.device) -> list[torch.Generator]:
    """The device's default generator (dropout's in a solo net), which every capture follows."""
    if device.type != "cuda":
        return []
    return [torch.cuda.default_generators[torch.cuda.current_device() if device.index is None else device.index]]


def _end_generator_capture(generators: list[torch.Generator]) -> None:
    """A capture that fails ends before ``capture_end`` takes the generators it drew from out of
    capture mode, and torch then refuses every later draw from them ("Offset increment outside
    graph capture"): the eager fall-back of a net with dropout would fail at its first step. Give
    each generator a fresh graph-safe state holding its own seed and offset."""
    for generator in generators:
        if generator.device.type != "cuda":
            continue  # only CUDA generators take part in a capture
        seed_and_offset = generator.get_state()
        generator.graphsafe_set_state(torch.Generator(device=generator.device).graphsafe_get_state())
        generator.set_state(seed_and_offset)


# The self-check's tolerance: one replay against one eager step from the same state and batch.
# Both run the same kernels, so they agree to float32 rounding (cuDNN may sum in another order);
# a graph that froze a value or lost an update is off by far more.
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-6


class GraphStep:
    """The training step, captured as a CUDA graph on its first batch and replayed after.

    Batches of the captured size are copied into static input buffers and the graph is
    replayed; the loss and the number correct come out in static output buffers. Any other
    size (the ragged last batch of an epoch) takes the eager step, on the same parameters and
    optimizer state. Right after the capture the graph is checked: one replay and one eager
    step from the same saved state must agree (``CHECK_RTOL``, ``CHECK_ATOL``) on the loss and
    every parameter. If the capture fails or the check does not pass, weights, optimizer state
    and RNG are put back as they were, ``fallback(reason)`` is called (it may raise to stop the
    run), and every later batch takes the eager step.

    The graph runs in float32 on one device with a plain ``loss.backward()``;
    ``step_factory.graph_unsupported_reason`` names the set-ups that need more. The optimizer must have
    been built with ``graph_optimizer_kwargs``. What the forward pass reads from Python (an
    attribute, a ``.item()``) is read once, at the capture: a forward that changes with such a
    value later replays the captured one (the check right after the capture cannot see it).
    """

    keeps_grads = True  # the graph writes the .grad tensors it was captured with
    EAGER = EagerStep  # the step it captures, and takes for other batch sizes

    def __init__(
        self,
        net: nn.Module,
        loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        device: torch.device,
        fallback: Callable[[str], None],
    ):
        self.net, self.loss, self.optimizer, self.device = net, loss, optimizer, device
        self.fallback = fallback
        self.eager = self.EAGER(net, loss, optimizer, keeps_grads=True)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.off_reason: str | None = None  # why this step no longer tries the graph
        self.batch_size = 0

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.graph is None and self.off_reason is None:
            self._capture_and_check(x, y)
        if self.graph is not None and x.shape == self.x.shape:
            return self._replay(x, y)
        return self.eager(x, y)

    def _replay(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss_out, self.correct_out

    def _prepare(self) -> None:
        """Make the optimizer ready for capture; here, not in __init__: a resumed checkpoint
        has brought its param groups by now."""
        ready_for_capture(self.optimizer, self.device)

    def _capture_and_check(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._prepare()
        try:
            self._capture(x, y)
            reason = self._disagreement()
        except RuntimeError as error:
            cause = error.__context__ or error  # capture_end's own error hides the first one
            reason = f"capturing the training step failed ({cause})"
        if reason is not None:
            self.graph, self.off_reason = None, reason
            self.fallback(reason)

    def _state_tensors(self) -> list[torch.Tensor]:
        tensors = [*self.net.parameters(), *self.net.buffers()]
        for state in self.optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return tensors

    def _save(self) -> tuple[dict[int, torch.Tensor], object]:
        """Weights, buffers, optimizer state and the RNG, to put back with ``_restore``."""
        return {id(t): t.detach().clone() for t in self._state_tensors()}, self._other_state()

    def _other_state(self) -> object:
        """What a step changes besides its state tensors: the device's random-number state."""
        return torch.cuda.get_rng_state()

    def _set_other_state(self, state: object) -> None:
        torch.cuda.set_rng_state(state)

    def _generators(self) -> list[torch.Generator]:
        """Random-number generators the step draws from besides the device's default one (which
        every graph follows): each must be registered with the graph before its capture."""
        return []

    def _restore(self, saved: tuple[dict[int, torch.Tensor], object]) -> None:
        """In place: the graph holds these tensors' addresses."""
        tensors, other = saved
        self._set_other_state(other)
        with torch.no_grad():
            for tensor in self._state_tensors():
                if id(tensor) in tensors:
                    tensor.copy_(tensors[id(tensor)])
                else:  # state the warm-up created: fresh state is all zeros (Adam, RMSprop, ...)
                    tensor.zero_()

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.batch_size = y.shape[-1]
        self.x, self.y = x.clone(), y.clone()
        self.graph = torch.cuda.CUDAGraph()
        for generator in self._generators():
            self.graph.register_generator_state(generator)
        # Warm-up steps build the optimizer state and cuDNN plans the capture needs. They
        # change weights and state and draw random numbers (dropout): put all that back after.
        saved = self._save()
        stream, pool = torch.cuda.current_stream(), torch.cuda.graph_pool_handle()
        capturing = False
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._graph_body()
            torch.cuda.current_stream().wait_stream(side)
            capturing = True
            with torch.cuda.graph(self.graph, pool=pool):
                self.loss_out, self.correct_out = self._graph_body()
        except Exception:
            if capturing:
                _release_failed_capture(pool)
                _end_generator_capture([*self._generators(), *_default_generator(self.device)])
            raise
        finally:
            torch.cuda.set_stream(stream)  # a failed capture can leave its own stream current
            torch.cuda.synchronize()
            self._restore(saved)
        # The graph writes the gradients at these addresses. Holding them keeps that memory
        # ours even when something sets ``p.grad = None`` (Lightning does before validation).
        self.grads = [p.grad for p in self.net.parameters()]

    def _graph_body(self) -> tuple[torch.Tensor, torch.Tensor]:
        # The eager step itself, on the static buffers: it zeroes the gradients in place first
        # (keeps_grads), inside the graph, so whatever ran before (the eager ragged batch) leaves
        # nothing behind and the graph keeps the same .grad tensors.
        return self.eager(self.x, self.y)

    def _disagreement(self) -> str | None:
        """Replay once, then take one eager step from the same saved state and batch; put the
        state back. None if they agree, else what differs (a phrase for a log line)."""
        saved = self._save()
        self.graph.replay()
        graph_loss = self.loss_out.detach().cpu().clone()
        graph_params = [p.detach().clone() for p in self.net.parameters()]
        self._restore(saved)
        eager_loss = self.eager(self.x, self.y)[0].detach().cpu().clone()
        eager_params = [p.detach().clone() for p in self.net.parameters()]
        self._restore(saved)
        pairs = [(graph_loss, eager_loss), *zip(graph_params, eager_params, strict=True)]
        if all(torch.allclose(g, e, rtol=CHECK_RTOL, atol=CHECK_ATOL, equal_nan=True) for g, e in pairs):
            return None
        worst = max(float((g - e).abs().max()) for g, e in pairs[1:])
        return (
            f"the captured step disagrees with the eager step (loss {_numbers(graph_loss)} against "
            f"{_numbers(eager_loss)}, parameters differ by up to {worst:.3g}; "
            f"tolerance rtol={CHECK_RTOL}, atol={CHECK_ATOL})"
        )


def _numbers(loss: torch.Tensor) -> str:
    """A loss for a log line: one number, or a pack's list of them."""
    values = [f"{v:.6g}" for v in loss.flatten().tolist()]
    return values[0] if loss.dim() == 0 else f"[{', '.join(values)}]"
