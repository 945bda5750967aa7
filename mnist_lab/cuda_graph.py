"""The whole training step (forward, loss, backward, optimizer step) captured once as a CUDA graph.

On the GPU an eager step costs ~2 ms of host time whatever the batch size: kernel launches,
not arithmetic, are the cost. Replaying a captured graph launches the step's hundreds of
kernels in one call. Batches are copied into static input buffers; the loss and the number
of correct predictions come out in static output buffers.

Capture needs fixed shapes, so the ragged last batch of an epoch (if any) runs eagerly on the
same parameters and optimizer state. Cases the graph cannot handle fall back to the eager
step; ``graph_unsupported_reason`` names them.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from mnist_lab.classifier import Classifier

# Optimizers whose step can run inside a graph: built with ``capturable=True`` (SGD: ``fused=True``),
# they keep their state and a tensor lr on the device.
CAPTURABLE = (
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.RMSprop,
    torch.optim.Adadelta,
    torch.optim.SGD,
)


def graph_unsupported_reason(module: Classifier) -> str | None:
    """None if the training step can be captured, else why not (a phrase for a log line)."""
    trainer = module._trainer
    if trainer is not None:
        if trainer.world_size > 1:
            return "training on several devices (gradients are all-reduced outside the graph)"
        if trainer.precision not in ("32-true", "32", 32):
            return f"trainer.precision={trainer.precision} (the graph step runs in float32)"
    optimizer_class = getattr(module.make_optimizer, "func", module.make_optimizer)
    if optimizer_class not in CAPTURABLE:
        return f"{getattr(optimizer_class, '__name__', optimizer_class)} cannot run inside a CUDA graph"
    if _cycles_momentum(module.make_scheduler):
        return "the scheduler cycles momentum (cycle_momentum=true), which the captured step reads as a constant"
    if module.device.type != "cuda":
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


def skip_capture_check(optimizer: torch.optim.Optimizer) -> None:
    """On CPU, drop the check Adam, AdamW and Adadelta make at every step for an ongoing graph
    capture: it calls ``torch.cuda.is_available()``, which under Lightning (it sets
    PYTORCH_NVML_BASED_CUDA_CHECK=1) is an NVML query, ~60 us a step on a CUDA build of torch
    without a GPU: half of a batch-1 MLP step. Nothing is ever captured on the CPU."""
    if hasattr(optimizer, "_accelerator_graph_capture_health_check"):
        optimizer._accelerator_graph_capture_health_check = lambda: None


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


class GraphStep:
    """Captures the training step on the first full batch and replays it for every later one.

    Raises RuntimeError if the capture fails; weights and optimizer state are then as before.
    """

    def __init__(self, module: Classifier, x: torch.Tensor, y: torch.Tensor):
        self.module = module
        self.batch_size = len(x)
        self.x, self.y = x.clone(), y.clone()
        self.graph = torch.cuda.CUDAGraph()
        self._capture()
        # The graph writes the gradients at these addresses. Holding them keeps that memory
        # ours even when something sets ``p.grad = None`` (Lightning does before validation).
        self.grads = [p.grad for p in module.parameters()]

    def _state_tensors(self) -> list[torch.Tensor]:
        optimizer = self.module.optimizers().optimizer
        tensors = [*self.module.parameters(), *self.module.buffers()]
        for state in optimizer.state.values():
            tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        return tensors

    def _capture(self) -> None:
        module = self.module
        optimizer = module.optimizers().optimizer
        # Warm-up steps build the optimizer state and cuDNN plans the capture needs. They
        # change weights and state and draw random numbers (dropout), so save all that first
        # and put it back afterwards (in place: the graph holds these tensors' addresses).
        saved = {id(t): t.detach().clone() for t in self._state_tensors()}
        rng, stream, pool = torch.cuda.get_rng_state(), torch.cuda.current_stream(), torch.cuda.graph_pool_handle()
        capturing = False
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._step(optimizer)
            torch.cuda.current_stream().wait_stream(side)
            capturing = True
            with torch.cuda.graph(self.graph, pool=pool):
                self.loss, self.correct = self._step(optimizer)
        except Exception:
            if capturing:
                _release_failed_capture(pool)
            raise
        finally:
            torch.cuda.set_stream(stream)  # a failed capture can leave its own stream current
            torch.cuda.synchronize()
            torch.cuda.set_rng_state(rng)
            with torch.no_grad():
                for tensor in self._state_tensors():
                    if id(tensor) in saved:
                        tensor.copy_(saved[id(tensor)])
                    else:  # state the warm-up created: fresh state is all zeros (Adam, RMSprop, ...)
                        tensor.zero_()

    def _step(self, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        # Zeroed in place at the start, inside the graph: whatever ran before (the eager ragged
        # batch) leaves nothing behind, and the graph keeps the same .grad tensors.
        optimizer.zero_grad(set_to_none=False)
        logits = self.module.net(self.x)
        loss = self.module.loss(logits, self.y)
        loss.backward()
        optimizer.step()
        return loss.detach(), (logits.detach().argmax(dim=1) == self.y).sum()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss, self.correct
