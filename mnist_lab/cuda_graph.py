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

# Optimizers whose ``capturable=True`` keeps the step (and a tensor lr) on the device.
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
    if module.device.type != "cuda":
        return "the model is not on a CUDA device"
    return None


def graph_optimizer_kwargs(make_optimizer) -> dict:
    """Extra optimizer arguments a captured step needs: ``capturable=True`` where it exists."""
    optimizer_class = getattr(make_optimizer, "func", make_optimizer)
    return {"capturable": True} if "capturable" in inspect.signature(optimizer_class).parameters else {}


def skip_capture_check(optimizer: torch.optim.Optimizer) -> None:
    """On CPU, drop the check Adam, AdamW and Adadelta make at every step for an ongoing graph
    capture: it calls ``torch.cuda.is_available()``, which under Lightning (it sets
    PYTORCH_NVML_BASED_CUDA_CHECK=1) is an NVML query, ~60 us a step on a CUDA build of torch
    without a GPU: half of a batch-1 MLP step. Nothing is ever captured on the CPU."""
    if hasattr(optimizer, "_accelerator_graph_capture_health_check"):
        optimizer._accelerator_graph_capture_health_check = lambda: None


class GraphStep:
    """Captures ``module.eager_step`` on the first full batch and replays it for every later one."""

    def __init__(self, module: Classifier, x: torch.Tensor, y: torch.Tensor):
        self.module = module
        self.batch_size = len(x)
        self.x, self.y = x.clone(), y.clone()
        self.graph = torch.cuda.CUDAGraph()
        self._capture()

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
        # change weights and state, so save them first and put them back afterwards (in place:
        # the graph holds these tensors' addresses).
        saved = {id(t): t.detach().clone() for t in self._state_tensors()}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step(optimizer)
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(self.graph):
            self.loss, self.correct = self._step(optimizer)
        with torch.no_grad():
            for tensor in self._state_tensors():
                if id(tensor) in saved:
                    tensor.copy_(saved[id(tensor)])
                else:  # state the warm-up created: fresh state is all zeros (Adam, RMSprop, ...)
                    tensor.zero_()
            for p in module.parameters():
                if p.grad is not None:
                    p.grad.zero_()

    def _step(self, optimizer: torch.optim.Optimizer) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.module.net(self.x)
        loss = self.module.loss(logits, self.y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # the graph keeps the same .grad tensors
        return loss.detach(), (logits.detach().argmax(dim=1) == self.y).sum()

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.x.copy_(x)
        self.y.copy_(y)
        self.graph.replay()
        return self.loss, self.correct
