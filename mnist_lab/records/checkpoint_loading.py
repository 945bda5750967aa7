"""A trained net back from a checkpoint, safely: the .ckpt of a run dir or path, loaded with
``weights_only=True``, its net and loss rebuilt from the run config it holds, but only from the
``_target_``s allowed (``buildable``, default ``BUILDABLE``). ``evaluate`` and ``predict`` load
their checkpoints here."""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from mnist_lab.cli.console import first_line

HOW_TO_PASS = "pass a run dir (outputs/<date>/<time>) or a .ckpt file written by mnist_lab.train"
# The modules whose callables a checkpoint's run config may name as ``_target_`` (the default of
# ``buildable`` in conf/evaluate.yaml and conf/predict.yaml): instantiating anything else would run
# code chosen by whoever wrote the file, although weights_only=True kept its unpickling safe. A user
# who trusts their own module (a model of their own) lists it there.
BUILDABLE = ("mnist_lab.models", "mnist_lab.losses", "torch.nn")


class CheckpointError(ValueError):
    """The path given is not a checkpoint this package can rebuild a model from."""


def checkpoint_file(path: str | os.PathLike) -> Path:
    """The .ckpt file for ``path``: the file itself, or a run dir's best (else last) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in ("checkpoints/best.ckpt", "checkpoints/last.ckpt", "best.ckpt", "last.ckpt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} is a directory with no checkpoints/best.ckpt in it; {HOW_TO_PASS}.")
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {HOW_TO_PASS}.")
    return path


def load_checkpoint(
    path: str | os.PathLike, device: torch.device, buildable: Sequence[str] = BUILDABLE
) -> tuple[Path, dict, nn.Module, nn.Module]:
    """(checkpoint file, run config, net in eval mode on ``device``, loss) from a checkpoint whose
    model and loss ``_target_``s lie in the modules ``buildable`` lists (and their submodules)."""
    file = checkpoint_file(path)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception:  # not a torch file at all, or one that holds arbitrary Python objects
        raise CheckpointError(f"{file} is not a PyTorch checkpoint; {HOW_TO_PASS}.") from None
    config = checkpoint.get("hyper_parameters", {}).get("config") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(config, dict)
        or not isinstance(checkpoint.get("state_dict"), dict)
        or not all(isinstance(config.get(part), dict) for part in ("model", "loss"))
    ):
        raise CheckpointError(f"{file} holds no mnist_lab run config, so the net cannot be rebuilt; {HOW_TO_PASS}.")
    buildable = [str(module).rstrip(".") for module in buildable]
    for part in ("model", "loss"):
        found = _foreign_target(config.get(part), buildable)
        if found:
            (target,) = found
            module = target.rsplit(".", 1)[0] if isinstance(target, str) and "." in target else None
            module = None if module is None or _within(module, buildable) else module  # a path through attributes
            trust = (
                f", or, if you trust that code, add its module: 'buildable=[{','.join([*buildable, module])}]'"
                if module
                else ""
            )
            raise CheckpointError(
                f"{file} asks to build {target!r} as its {part}, which is in no module that buildable lists "
                f"({', '.join(buildable)}), and is not run; {HOW_TO_PASS}{trust}."
            )
    prefix = "net."
    weights = {k[len(prefix) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    try:  # a config or weights changed by hand: the constructor's or torch's first line
        net = instantiate(config["model"])
        net.load_state_dict(weights)
        loss = instantiate(config["loss"])
    except Exception as error:  # noqa: BLE001  (constructors raise anything)
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        raise CheckpointError(
            f"{file} does not rebuild into a net ({first_line(cause)}); it was not "
            f"written by mnist_lab.train as it is; {HOW_TO_PASS}."
        ) from None
    return file, config, net.to(device).eval(), loss.to(device)


def _foreign_target(node, buildable: Sequence[str]) -> tuple | None:
    """``(target,)`` for the first ``_target_`` in a config tree that is in no module of
    ``buildable`` (or not a string); None if there is none."""
    if isinstance(node, dict):
        target = node.get("_target_")
        if "_target_" in node and not _defined_in(target, buildable):
            return (target,)
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    return next((found for child in children if (found := _foreign_target(child, buildable))), None)


def _within(module: str, buildable: Sequence[str]) -> bool:
    return any(module == allowed or module.startswith(f"{allowed}.") for allowed in buildable)


def _defined_in(target, buildable: Sequence[str]) -> bool:
    """Whether ``target`` names a class or function of a module ``buildable`` lists, by that
    module's own path. Its text alone is not enough: Hydra follows attributes, so
    ``torch.nn.modules.module.torch.os.system`` would reach ``os.system`` through ``torch.nn``.
    The named module is imported only once its name is allowed."""
    if not isinstance(target, str) or "." not in target:
        return False
    module, _, name = target.rpartition(".")
    if not _within(module, buildable):
        return False
    try:
        found = getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - no such module or name (a path through attributes, say)
        return False
    return callable(found) and _within(getattr(found, "__module__", None) or "", buildable)


def buildable_setting(cfg: DictConfig) -> list[str]:
    """``buildable`` from evaluate's or predict's config: a list of module names (sys.exit's
    sentence otherwise)."""
    value = OmegaConf.to_container(cfg.buildable) if OmegaConf.is_list(cfg.get("buildable")) else cfg.get("buildable")
    if not isinstance(value, list) or not all(isinstance(m, str) and m.strip(".") for m in value):
        sys.exit(
            f"error: buildable={value!r} is not a list of module names; give e.g. "
            f"'buildable=[{','.join(BUILDABLE)},my_models]'."
        )
    return value


def pick_device(name: str) -> torch.device:
    """``auto`` (the GPU if there is one), ``cpu`` or ``cuda``, checked: a ValueError says what to use."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not str(name).startswith("cuda:"):
        raise ValueError(f"device={name} is not a device here; use device=auto, cpu or cuda.")
    if name != "cpu" and not torch.cuda.is_available():
        raise ValueError(f"device={name} but this machine has no CUDA GPU; use device=cpu or device=auto.")
    return torch.device(name)
