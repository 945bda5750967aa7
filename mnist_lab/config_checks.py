"""Checks of a run's settings, made once at start, before any data is touched.

Overrides are typed by hand, so a typo or a wild value is normal use. Each check turns one into
a sentence that says what is wrong, the value seen and what to do (a ``ConfigError``), instead
of a traceback from deep inside torch or Lightning minutes later. (Hydra's own errors, an
unknown option or key, get the same treatment in hydra_errors.py.) docs/reliability.md lists
every case and the test that checks it.
"""

from __future__ import annotations

import json
import math
import os
import pickle
from pathlib import Path

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from mnist_lab import mnist_files
from mnist_lab.data import TRAIN_SIZE, validation_count
from mnist_lab.models import ACTIVATIONS
from mnist_lab.run_record import RunRecord


class ConfigError(ValueError):
    """A setting the user can fix; the message says how."""


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


# --------------------------------------------------------------------------- the settings


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first setting that cannot work (``ckpt_path`` aside)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    _require(_is_whole(c["seed"]), f"seed={c['seed']!r} must be a whole number, e.g. seed=0.")
    check_optimizer(c["optimizer"])
    check_data(c["data"])
    check_trainer(c["trainer"])
    check_step(c["step"])
    check_model(c["model"])
    check_loss(c["loss"])
    check_scheduler(c.get("scheduler"), c["optimizer"])
    _require("early_stopping" not in c,  # a config written before it moved would be ignored
             "early_stopping.patience is now callbacks.early_stopping.patience; move it there.")
    patience = (c.get("callbacks") or {}).get("early_stopping", {}).get("patience")
    _require(patience is None or (_is_whole(patience) and patience >= 1),
             f"callbacks.early_stopping.patience={patience!r} must be a whole number of at least 1 "
             "(epochs without a better val/acc), or null to train all trainer.max_epochs.")  # fmt: skip


def check_optimizer(optimizer: dict) -> None:
    lr = optimizer.get("lr")
    _require(_is_number(lr),
             f"optimizer.lr={lr!r} is not a number; write it like optimizer.lr=0.001.")  # fmt: skip
    _require(math.isfinite(lr) and lr > 0,
             f"optimizer.lr={lr} must be a positive number; try 0.001 for adam or 0.01 for sgd.")
    for key in ("weight_decay", "momentum"):
        value = optimizer.get(key, 0)
        _require(_is_number(value) and value >= 0,
                 f"optimizer.{key}={value!r} must be a number of at least 0.")  # fmt: skip
    if optimizer.get("nesterov"):
        _require(optimizer.get("momentum", 0) > 0 and optimizer.get("dampening", 0) == 0,
                 "optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0; "
                 "add optimizer.momentum=0.9.")  # fmt: skip
    betas = optimizer.get("betas")
    if betas is not None:
        _require(isinstance(betas, list) and len(betas) == 2
                 and all(_is_number(b) and 0 <= b < 1 for b in betas),
                 f"optimizer.betas={betas!r} must be two numbers in [0, 1), "
                 "e.g. optimizer.betas=[0.9,0.999].")  # fmt: skip


def check_data(data: dict) -> None:
    for key in ("batch_size", "eval_batch_size"):
        size = data[key]
        _require(_is_whole(size) and size >= 1,
                 f"data.{key}={size!r} must be a whole number of at least 1 "
                 "(1 is allowed: one image per step).")  # fmt: skip
    val_size, split_seed = data["val_size"], data["split_seed"]
    _require(_is_number(val_size),
             f"data.val_size={val_size!r} is not a number; give a count like 10000 "
             "or a fraction like 0.1.")  # fmt: skip
    _require(_is_whole(split_seed), f"data.split_seed={split_seed!r} must be a whole number.")
    try:
        n_train = TRAIN_SIZE - validation_count(val_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _require(data["batch_size"] <= n_train,
             f"data.batch_size={data['batch_size']} is larger than the {n_train} training images "
             f"({TRAIN_SIZE} minus data.val_size={val_size}); use at most {n_train}.")  # fmt: skip
    check_data_dir(data["data_dir"])


def check_data_dir(data_dir: str) -> None:
    """The data dir must be writable, unless the parsed cache is there already (it is only read)."""
    if mnist_files.cache_path(data_dir).is_file():
        return
    path = Path(data_dir).absolute()
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        problem = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        problem = f"{existing} is not writable"
    else:
        return
    raise ConfigError(
        f"cannot write to data_dir {path} ({problem}); set data.data_dir to a writable folder."
    )


def check_step(step: dict) -> None:
    cuda_graph, check_every, threshold = step["cuda_graph"], step["check_every"], step["divergence_threshold"]
    _require(cuda_graph in ("auto", "on", "off"),
             f"step.cuda_graph={cuda_graph!r} is not a choice; use auto (capture on a GPU when "
             "it can), on (fail if it cannot) or off.")  # fmt: skip
    _require(_is_whole(check_every) and check_every >= 1,
             f"step.check_every={check_every!r} must be a whole number of at least 1 (steps between "
             "checks of the training loss).")  # fmt: skip
    _require(_is_number(threshold) and threshold > 0,
             f"step.divergence_threshold={threshold!r} must be a positive number (a training loss "
             "above it counts as diverged), e.g. 10000.")  # fmt: skip


def check_trainer(trainer: dict) -> None:
    epochs = trainer["max_epochs"]
    _require(_is_whole(epochs) and epochs >= 1,
             f"trainer.max_epochs={epochs!r} must be a whole number of at least 1.")  # fmt: skip
    if str(trainer["accelerator"]) in ("gpu", "cuda"):
        _require(torch.cuda.is_available(),
                 f"trainer.accelerator={trainer['accelerator']} (trainer=gpu) needs a CUDA GPU, "
                 "but PyTorch sees none on this machine; use trainer=cpu, or trainer=auto to use "
                 "a GPU only when there is one.")  # fmt: skip
        devices, count = trainer.get("devices", 1), torch.cuda.device_count()
        _require(not _is_whole(devices) or devices <= count,
                 f"trainer.devices={devices} but this machine has {count} GPU(s); "
                 f"use trainer.devices={count}.")  # fmt: skip


WIDTH_EXAMPLES = {"hidden": "[256,128] ([] is softmax regression)", "fc": "[128]",
                  "channels": "[32,64]", "kernel_sizes": "[3,3]"}  # fmt: skip


def check_model(model: dict) -> None:
    for key, example in WIDTH_EXAMPLES.items():
        if key in model:
            widths = model[key]
            _require(isinstance(widths, list) and all(_is_whole(w) and w >= 1 for w in widths),
                     f"model.{key}={widths!r} must be a list of positive whole numbers, "
                     f"e.g. model.{key}={example}.")  # fmt: skip
    for key in ("dropout", "conv_dropout"):
        if key in model:
            p = model[key]
            _require(_is_number(p) and 0 <= p < 1,
                     f"model.{key}={p!r} must be a number in [0, 1) (the fraction of units "
                     f"zeroed in training), e.g. model.{key}=0.5.")  # fmt: skip
    if "activation" in model:
        _require(model["activation"] in ACTIVATIONS,
                 f"model.activation={model['activation']!r} is not one of "
                 f"{', '.join(ACTIVATIONS)}; e.g. model.activation=relu.")  # fmt: skip


def check_loss(loss: dict) -> None:
    smoothing = loss.get("label_smoothing", 0.0)
    _require(_is_number(smoothing) and 0 <= smoothing <= 1,
             f"loss.label_smoothing={smoothing!r} must be a number in [0, 1], e.g. 0.1.")


def check_scheduler(scheduler: dict | None, optimizer: dict) -> None:
    if not scheduler:
        return
    name = scheduler["_target_"].rsplit(".", 1)[-1]
    for key in ("step_size", "T_max"):
        if key in scheduler:
            value = scheduler[key]
            _require(_is_whole(value) and value >= 1,
                     f"scheduler.{key}={value!r} must be a whole number of epochs, at least 1.")
    for key in ("gamma", "max_lr"):
        if key in scheduler:
            value = scheduler[key]
            _require(_is_number(value) and value > 0,
                     f"scheduler.{key}={value!r} must be a positive number.")  # fmt: skip
    if name == "ReduceLROnPlateau":
        _require(scheduler.get("mode") == "max",
                 f"scheduler.mode={scheduler.get('mode')!r}: scheduler=plateau watches val/acc, "
                 "which should go up, so it needs scheduler.mode=max.")  # fmt: skip
        factor = scheduler.get("factor")
        _require(_is_number(factor) and 0 < factor < 1,
                 f"scheduler.factor={factor!r} must be a number in (0, 1), e.g. 0.1.")  # fmt: skip
    if name == "OneCycleLR":
        pct = scheduler.get("pct_start")
        _require(_is_number(pct) and 0 < pct < 1,
                 f"scheduler.pct_start={pct!r} must be in (0, 1), e.g. 0.3.")  # fmt: skip
        has_momentum = "momentum" in optimizer or "betas" in optimizer
        _require(not scheduler.get("cycle_momentum") or has_momentum,
                 f"scheduler.cycle_momentum=true needs an optimizer with momentum or betas, and "
                 f"{optimizer['_target_'].rsplit('.', 1)[-1]} has neither; use "
                 "scheduler.cycle_momentum=false or another optimizer "
                 "(sgd, adam, adamw, rmsprop).")  # fmt: skip


# --------------------------------------------------------------------------- run dir and checkpoint


def claim_run_dir(cfg: DictConfig, run_dir: Path, record: RunRecord, sweep_dir: Path | None):
    """Make ``run_dir`` this run's, or raise ``ConfigError`` without writing anything.

    A run dir holding an earlier run is only reused to resume it (``ckpt_path=last``). In a
    sweep, a folder with this job's number but other overrides means a second sweep is writing
    into the same sweep dir.
    """
    if rank_zero_only.rank > 0:  # a process Lightning started for another device: rank 0 claimed
        return
    ckpt_path = cfg.ckpt_path
    resuming = ckpt_path == "last" or (
        ckpt_path is not None and Path(ckpt_path).resolve().is_relative_to(run_dir.resolve())
    )
    if ckpt_path == "last" and not record.path.exists() and sweep_dir is None:
        raise ConfigError(
            f"ckpt_path=last resumes the run in hydra.run.dir, but {run_dir} holds no run; add "
            "hydra.run.dir=<the dir of the run to resume> (its last line printed it)."
        )
    if sweep_dir is not None and not resuming:
        num = run_dir.name.split("_", 1)[0]
        others = sorted(d.name for d in sweep_dir.iterdir() if d.is_dir() and d.name != run_dir.name
                        and (d.name == num or d.name.startswith(f"{num}_")))  # fmt: skip
        if others:
            raise ConfigError(
                f"another sweep is writing into {sweep_dir}: it holds job {others[0]} besides "
                f"this sweep's {run_dir.name}; give each sweep its own hydra.sweep.dir."
            )
    if not record.claim(exclusive=not resuming):
        status = _status_of(record.path)
        where = ("or give this sweep its own hydra.sweep.dir." if sweep_dir is not None
                 else "or give this run another hydra.run.dir (runs started in the same second "
                 "share the default one).")  # fmt: skip
        raise ConfigError(
            f"{run_dir} already holds a run (status {status}); add ckpt_path=last to resume it, "
            + where
        )


def _status_of(metrics_path: Path) -> str:
    try:
        return json.loads(metrics_path.read_text()).get("status", "unknown")
    except (OSError, ValueError):
        return "unknown"


def resume_path(ckpt_path: str | None, run_dir: Path) -> Path | None:
    """The checkpoint to resume from. ``last``: the run dir's last.ckpt, or None (start afresh)
    if no epoch finished before."""
    if ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        return last if last.exists() else None
    return None if ckpt_path is None else Path(ckpt_path)


def check_checkpoint(cfg: DictConfig, path: Path | None) -> None:
    """``path`` (``resume_path``'s) must be a checkpoint this template wrote, for the model this
    run builds: the same model settings as the run that wrote it."""
    if path is None:
        return
    _require(not path.is_dir(),
             f"ckpt_path={cfg.ckpt_path} is a folder; give its checkpoints/last.ckpt, or "
             f"ckpt_path=last with hydra.run.dir={cfg.ckpt_path}.")  # fmt: skip
    _require(path.is_file(),
             f"ckpt_path={cfg.ckpt_path} does not exist; give a .ckpt file from a run's "
             "checkpoints/ folder, or ckpt_path=last with hydra.run.dir=<that run's dir>.")
    try:  # weights_only: a checkpoint is data, never code (see docs/reliability.md)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        saved = checkpoint["hyper_parameters"]["config"]["model"]
    except pickle.UnpicklingError as error:  # weights_only refused a class, or not a pickle
        reason = ("it holds Python objects besides tensors and plain data, and is not loaded"
                  if "Unsupported global" in str(error)
                  else "it is not a PyTorch checkpoint, or it is truncated")  # fmt: skip
    except (KeyError, TypeError):
        reason = "it has no mnist_lab config in it"
    except Exception:  # noqa: BLE001  (torch raises RuntimeError and others for a non-zip file)
        reason = "it is not a PyTorch checkpoint, or it is truncated"
    else:
        reason = None
    _require(reason is None,
             f"ckpt_path={path} is not a checkpoint written by mnist_lab.train ({reason}); "
             "give a .ckpt file from a run's checkpoints/ folder.")  # fmt: skip
    difference = model_difference(saved, cfg.model)
    if difference:
        raise ConfigError(
            f"ckpt_path={path} holds another model ({difference}); resume "
            "with the model settings of the run that wrote it (its .hydra/overrides.yaml)."
        )


def model_difference(saved: dict, model: DictConfig) -> str:
    """``MLP there, CNN here``, or the first settings that differ, e.g. ``model.hidden=...``;
    empty if none do."""
    wanted = OmegaConf.to_container(model, resolve=True)
    saved_class, wanted_class = (m.get("_target_", "?").rsplit(".", 1)[-1] for m in (saved, wanted))
    if saved_class != wanted_class:
        return f"{saved_class} there, {wanted_class} here"
    keys = [k for k in sorted(set(saved) | set(wanted)) if saved.get(k) != wanted.get(k)]
    return "; ".join(f"model.{k}={saved.get(k)!r} there, {wanted.get(k)!r} here" for k in keys[:3])


def out_of_memory_message(cfg: DictConfig) -> str:
    """What to lower when the GPU runs out of memory (train.py raises it in place of torch's)."""
    smaller_eval = max(cfg.data.eval_batch_size // 4, 1)
    return (
        f"the GPU ran out of memory with data.batch_size={cfg.data.batch_size} and "
        f"data.eval_batch_size={cfg.data.eval_batch_size} (validation and test batches); lower "
        f"data.eval_batch_size first (e.g. data.eval_batch_size={smaller_eval}), then "
        "data.batch_size or the model's size, or use trainer=cpu."
    )
