"""A CPU stand-in for ``torch.cuda.CUDAGraph``, strict where a real graph is strict.

CI has no GPU, so the graph path of ``mnist_lab/run/cuda_graph.py`` is tested here against an
emulation that keeps a real graph's four rules:

1. Capture records every aten op with the very tensors it read and wrote, and replay re-runs
   those ops on those tensors: Python values (a float lr, momentum, betas) are frozen at
   capture, and a tensor swapped in afterwards (``p.grad = new``) is not seen by the graph.
2. A host sync during capture (``.item()``, ``bool(tensor)``, a tensor passed where a
   Python number is expected) is an error, as on the GPU.
3. A tensor made before the capture and used by it must stay alive: the real graph keeps
   only its address, and freed memory is soon reused by other tensors. Replay fails if
   one has been freed.
4. A random-number generator of one's own (``generator=``) must be registered with the graph
   (``register_generator_state``) before the capture draws from it; replay draws on from its
   current state, so reseeding it between replays is seen, as on the GPU.

What it cannot show: kernels, streams, the memory pool, CPU tensors baked into a CUDA graph.
"""

from __future__ import annotations

import contextlib
import importlib
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

HOST_SYNCS = {torch.ops.aten._local_scalar_dense.default, torch.ops.aten.item.default}
# ``torch.tensor(constant)`` inside the step: its argument is a constant made during capture.
LIFTS = {torch.ops.aten.lift_fresh.default, torch.ops.aten.lift_fresh_copy.default}


class CaptureError(RuntimeError):
    """What CUDA raises for a host sync during capture."""


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: EmulatedCUDAGraph):
        super().__init__()
        self.graph = graph
        self.made_here: set[int] = set()  # ids of tensors the captured ops produced

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_SYNCS:
            raise CaptureError(f"operation not permitted when stream is capturing ({func})")
        generator = kwargs.get("generator")
        if generator is not None and not self.graph.registered(generator):
            raise CaptureError(f"{func} draws from a generator not registered with the graph")
        out = func(*args, **kwargs)
        if func in LIFTS:
            self.graph.internal += list(args)
            self.made_here.update(id(t) for t in args)
        inputs = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        made = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and id(t) not in inputs]
        self.graph.internal += made  # the graph's own memory pool keeps these alive
        self.made_here.update(id(t) for t in made)

        def reference(value):
            if not isinstance(value, torch.Tensor) or id(value) in self.made_here:
                return value
            return _External(value)  # held weakly, like an address in a real graph

        self.graph.ops.append(tuple(tree_map(reference, part) for part in (func, args, kwargs, out)))
        return out


class _External:
    def __init__(self, tensor: torch.Tensor):
        self.ref, self.what = weakref.ref(tensor), f"{tuple(tensor.shape)} {tensor.dtype}"

    def get(self) -> torch.Tensor:
        tensor = self.ref()
        if tensor is None:
            raise AssertionError(
                f"the captured step uses a tensor {self.what} made before the capture and freed since: "
                "a real CUDA graph would read and write memory now reused by other tensors"
            )
        return tensor


def _resolve(value):
    return value.get() if isinstance(value, _External) else value


class EmulatedCUDAGraph:
    def __init__(self):
        self.ops: list = []
        self.internal: list[torch.Tensor] = []
        self.generators: list[torch.Generator] = []

    def register_generator_state(self, generator: torch.Generator) -> None:
        self.generators.append(generator)

    def registered(self, generator: torch.Generator) -> bool:
        # The dispatcher hands an op a new Python object for the same generator, so a registered
        # one is recognised by its state (a generator in the very state of a registered one would
        # pass too: the check is for a stream left out, not for a copy of one).
        state = generator.get_state()
        return any(torch.equal(state, g.get_state()) for g in self.generators)

    def replay(self) -> None:
        with torch.no_grad():
            for func, args, kwargs, recorded in self.ops:
                try:
                    args, kwargs = tree_map(_resolve, args), tree_map(_resolve, kwargs)
                except AssertionError as error:
                    raise AssertionError(f"{error} (an argument of {func})") from None
                out = func(*args, **kwargs)
                for new, old in zip(tree_flatten(out)[0], tree_flatten(tree_map(_resolve, recorded))[0], strict=True):
                    if isinstance(new, torch.Tensor) and new.data_ptr() != old.data_ptr():
                        old.copy_(new)  # results land where the captured ops put them


class HalfReplayedGraph(EmulatedCUDAGraph):
    """A graph broken on purpose: replay runs only the first half of the captured ops (the
    forward pass and part of the backward), so the weights are never updated."""

    def replay(self) -> None:
        ops, self.ops = self.ops, self.ops[: len(self.ops) // 2]
        try:
            super().replay()
        finally:
            self.ops = ops


@contextlib.contextmanager
def capture(graph: EmulatedCUDAGraph, pool=None):
    with _Recorder(graph):
        yield


class _NoStream:
    def wait_stream(self, other) -> None:
        pass


def install(monkeypatch) -> None:
    """Route ``torch.cuda`` graph and stream calls to the emulation, and let optimizers take
    the paths they take on CUDA tensors: ``capturable=True`` (all state on the device, no host
    sync) and the foreach implementation (their default on CUDA, single-tensor on CPU)."""
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "CUDAGraph", EmulatedCUDAGraph)
    monkeypatch.setattr(cuda, "graph", capture)
    monkeypatch.setattr(cuda, "Stream", _NoStream)
    monkeypatch.setattr(cuda, "current_stream", _NoStream)
    monkeypatch.setattr(cuda, "stream", lambda stream: contextlib.nullcontext())
    monkeypatch.setattr(cuda, "set_stream", lambda stream: None)
    monkeypatch.setattr(cuda, "synchronize", lambda *args: None)
    monkeypatch.setattr(cuda, "graph_pool_handle", lambda: None)
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "get_rng_state", torch.get_rng_state)  # dropout draws on the CPU here
    monkeypatch.setattr(cuda, "set_rng_state", torch.set_rng_state)
    optimizer_module = importlib.import_module("torch.optim.optimizer")
    monkeypatch.setattr(optimizer_module, "_get_foreach_kernels_supported_devices", lambda: ["cpu"])
    for name in ("adam", "adamw", "adadelta", "rmsprop"):
        module = importlib.import_module(f"torch.optim.{name}")
        if hasattr(module, "_get_capturable_supported_devices"):
            monkeypatch.setattr(module, "_get_capturable_supported_devices", lambda *args, **kwargs: ["cpu"])
