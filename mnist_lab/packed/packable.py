"""Whether a pack can compute a job's network: decided by what the network is, not what it is
called (``packed_form_reason``), before the planner puts the job in a pack (``model_reason``);
``check.py`` then proves it on each pack.

``PackedNet`` computes an ``nn.Sequential`` of the layers it knows (``nn.Flatten``, ``nn.Linear``,
``nn.BatchNorm1d``, ``nn.Dropout``, activations; ``nn.Conv2d`` and ``nn.MaxPool2d`` before the
flatten), calling them in order. Any class name qualifies; a class that defines anything a
``Sequential`` has besides ``__init__`` (``forward``, ``__call__``, ...), a layer of another
type (``BatchNorm2d``, a subclass of ``Linear``), a layer setting the packed layers ignore
(``bias=False``, a dilated convolution) or a hook does not: the planner sends such jobs alone.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterator

import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn

from mnist_lab.cli.console import first_line
from mnist_lab.packed.layers import ELEMENTWISE

# What a Sequential subclass may define without changing what the Sequential computes.
CLASS_BOOKKEEPING = {
    "__init__",
    "__module__",
    "__qualname__",
    "__doc__",
    "__dict__",
    "__weakref__",
    "__annotations__",
    "__firstlineno__",
    "__static_attributes__",
    "__orig_bases__",
    "__parameters__",
}
SEQUENTIAL_NAMES = set(dir(nn.Sequential))
ACTIVATIONS = tuple(kind for kind in ELEMENTWISE if kind is not nn.MaxPool2d)
DENSE = (nn.Linear, nn.BatchNorm1d, nn.Dropout, *ACTIVATIONS)  # the layers a pack computes after the flatten
CONV = (nn.Conv2d, nn.MaxPool2d, nn.Dropout, *ACTIVATIONS)  # and before it


def target_of(cfg) -> str:
    return str(cfg.model.get("_target_"))


def packed_form_reason(net: nn.Module) -> str | None:
    """None if ``PackedNet`` computes ``net`` layer for layer, else why not (a few words)."""
    name = type(net).__name__
    if not isinstance(net, nn.Sequential):
        return f"{name} is not an nn.Sequential"
    for cls in type(net).__mro__[: type(net).__mro__.index(nn.Sequential)]:
        own = sorted(n for n in vars(cls) if n in SEQUENTIAL_NAMES and n not in CLASS_BOOKKEEPING)
        if own:
            return f"{cls.__name__} defines {own[0]}"
    if net._forward_hooks or net._forward_pre_hooks or net._backward_hooks:
        return "a hook on it"
    layers = list(net)
    if not layers or type(layers[0]) not in (nn.Flatten, nn.Conv2d):
        return "its first layer is not nn.Flatten or nn.Conv2d"
    flattened = False
    for position, layer in enumerate(layers):
        kind = type(layer)
        if layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks:
            return f"a hook on its layer {position}"
        if kind is nn.Flatten:
            if flattened or (layer.start_dim, layer.end_dim) != (1, -1):
                return f"its layer {position} (Flatten) is not the one flatten a pack makes"
            flattened = True
            continue
        if kind not in (DENSE if flattened else CONV):
            where = f" {'after' if flattened else 'before'} the flatten" if kind in DENSE + CONV else ""
            return f"its {kind.__name__} layer {position}{where}"
        if kind is nn.Dropout and (position == 0 or type(layers[position - 1]) in (nn.Dropout, nn.Flatten)):
            return f"its Dropout layer {position} does not follow a layer"
        setting = _unpacked_setting(layer)
        if setting:
            return f"its {kind.__name__} layer {position} has {setting}"
    return None if flattened else "it has no nn.Flatten"


def _unpacked_setting(layer: nn.Module) -> str | None:
    """A setting of a known layer that the packed layer does not follow."""
    if isinstance(layer, (nn.Linear, nn.Conv2d)) and layer.bias is None:
        return "bias=False"
    if isinstance(layer, nn.Conv2d) and (layer.groups, layer.dilation, layer.padding_mode) != (1, (1, 1), "zeros"):
        return "groups, dilation or padding_mode set"
    if isinstance(layer, nn.BatchNorm1d) and not (layer.affine and layer.track_running_stats):
        return "affine=False or track_running_stats=False"
    return None


def model_reason(cfg) -> str | None:
    """None if the job's network (``cfg.model``, built here) has a packed form, else the reason
    (``model has no packed form (<target>: <why>)``). Building it draws no number a run sees."""
    try:
        with kept_rng():
            reason = packed_form_reason(instantiate(cfg.model))
    except Exception as error:  # noqa: BLE001  (constructors raise anything; the solo path reports it)
        reason = f"building it failed, {first_line(error)}"
    return None if reason is None else f"model has no packed form ({target_of(cfg)}: {reason})"


@contextlib.contextmanager
def kept_rng() -> Iterator[None]:
    """Python's, numpy's and torch's random state (CPU and every CUDA device in use), and the
    seed Lightning records, put back afterwards."""
    python, numpy = random.getstate(), np.random.get_state()
    seed = os.environ.get("PL_GLOBAL_SEED")
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)
            if seed is None:
                os.environ.pop("PL_GLOBAL_SEED", None)
            else:
                os.environ["PL_GLOBAL_SEED"] = seed
