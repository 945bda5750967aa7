"""Checks of the checkpoint a run resumes from (``ckpt_path``), made before anything is written.

A checkpoint must be one mnist_lab.train wrote, for the model and optimizer this run builds,
from a run that did not diverge. Each refusal is one sentence (a ``ConfigError``);
docs/reliability.md lists the cases and the tests that check them.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mnist_lab.cli.config_error import ConfigError


def check_checkpoint(cfg: DictConfig, path: Path | None) -> None:
    """``path`` (``resume_path``'s) must be a checkpoint this template wrote, for the model and
    optimizer this run builds, of a run whose loss did not diverge."""
    if path is None:
        return
    if path.is_dir():
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} is a folder; give its checkpoints/last.ckpt, "
            f"or ckpt_path=last with hydra.run.dir={cfg.ckpt_path}."
        )
    if not path.is_file():
        raise ConfigError(
            f"ckpt_path={cfg.ckpt_path} does not exist; give a .ckpt file from a run's "
            "checkpoints/ folder, or ckpt_path=last with hydra.run.dir=<that run's dir>."
        )
    checkpoint, reason = None, None
    try:  # weights_only: a checkpoint is data, never code (see docs/reliability.md)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # weights_only refused a class, or not a pickle
        reason = (
            "it holds Python objects besides tensors and plain data, and is not loaded"
            if "Unsupported global" in str(error)
            else "it is not a PyTorch checkpoint, or it is truncated"
        )
    except Exception:  # noqa: BLE001  (torch raises RuntimeError and others for a non-zip file)
        reason = "it is not a PyTorch checkpoint, or it is truncated"
    config = _get(checkpoint, "hyper_parameters", "config")
    if reason is None and not all(isinstance(_get(config, part), dict) for part in ("model", "optimizer")):
        reason = "it has no mnist_lab config in it"
    if reason is None and not isinstance(_get(checkpoint, "state_dict"), dict):
        reason = "it holds no state_dict, the weights"
    if reason is not None:
        raise ConfigError(
            f"ckpt_path={path} is not a checkpoint written by mnist_lab.train ({reason}); "
            "give a .ckpt file from a run's checkpoints/ folder."
        )
    if checkpoint.get("packed") and "optimizer_states" not in checkpoint:  # run_record.PACKED_FIELDS
        raise ConfigError(
            f"ckpt_path={path} was written by a packed sweep of an earlier version, whose checkpoints "
            "hold weights only (no optimizer or loop state); start a new run without ckpt_path."
        )
    difference = model_difference(config["model"], cfg.model)
    if difference:
        raise ConfigError(
            f"ckpt_path={path} holds another model ({difference}); resume "
            "with the model settings of the run that wrote it (its .hydra/overrides.yaml)."
        )
    saved_optimizer, optimizer = (_class_name(c) for c in (config["optimizer"], cfg.optimizer))
    if saved_optimizer != optimizer:
        raise ConfigError(
            f"ckpt_path={path} holds the state of another optimizer ({saved_optimizer} there, "
            f"{optimizer} here); resume with the optimizer of the run that wrote it (its "
            ".hydra/overrides.yaml), or start a new run without ckpt_path."
        )
    diverged_at = checkpoint.get("diverged_at")
    if diverged_at is not None:
        raise ConfigError(
            f"ckpt_path={path} is from a run whose loss diverged at step {diverged_at}, so its "
            "weights are not finite and training on would go nowhere; start a new run without "
            "ckpt_path, e.g. with a lower optimizer.lr."
        )


def _get(node, *keys):
    """``node[k1][k2]...``, or None where a level is missing or not a dict."""
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _class_name(config) -> str:
    return str(config.get("_target_", "?")).rsplit(".", 1)[-1]


def model_difference(saved: dict, model: DictConfig) -> str:
    """``MLP there, CNN here``, or the first settings that differ, e.g. ``model.hidden=...``;
    empty if none do."""
    wanted = OmegaConf.to_container(model, resolve=True)
    saved_class, wanted_class = (_class_name(m) for m in (saved, wanted))
    if saved_class != wanted_class:
        return f"{saved_class} there, {wanted_class} here"
    keys = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    return "; ".join(f"model.{k}={saved.get(k)!r} there, {wanted.get(k)!r} here" for k in keys[:3])
