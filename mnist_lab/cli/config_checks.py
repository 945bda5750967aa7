"""Checks of a run's settings, made once at start, before any data is touched.

Overrides are typed by hand, so a typo or a wild value is normal use. Each check turns one into
a sentence that says what is wrong, the value seen and what to do (a ``ConfigError``), instead
of a traceback from deep inside torch or Lightning minutes later. (Hydra's own errors, an
unknown option or key, get the same treatment in hydra_errors.py.) docs/reliability.md lists
every case and the test that checks it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mnist_lab.cli.hydra_errors import group_not_set
from mnist_lab.data import mnist_arrays
from mnist_lab.data.datamodule import TRAIN_SIZE, validation_count
from mnist_lab.models import ACTIVATIONS
from mnist_lab.tracking.trackers import missing_package


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


# What a run reads before and besides check_config, with an example value each.
REQUIRED_KEYS = {
    "seed": "0",
    "ckpt_path": "null",
    "data.data_dir": "data",
    "data.batch_size": "64",
    "data.eval_batch_size": "10000",
    "data.val_size": "10000",
    "data.split_seed": "0",
    "optimizer.lr": "0.001",
    "trainer.max_epochs": "10",
    "step.cuda_graph": "auto",
    "step.check_every": "50",
    "step.divergence_threshold": "10000.0",
}
SEED_RANGE = (0, 2**32 - 1)  # numpy's


def check_required(cfg: DictConfig) -> None:
    """Every group and key a run reads is there: ``~model``, ``model=null`` or
    ``~trainer.max_epochs`` removes one; and ``ckpt_path`` is a path, ``last`` or null."""
    for group in ("data", "model", "loss", "optimizer", "trainer"):
        node = cfg.get(group)
        if not isinstance(node, DictConfig) or (group != "trainer" and "_target_" not in node):
            raise ConfigError(group_not_set(group))
    for key, example in REQUIRED_KEYS.items():
        _require(
            OmegaConf.select(cfg, key, default="<missing>") != "<missing>",
            f"{key} is missing (an override such as ~{key} removed it); drop that override, "
            f"or set it, e.g. {key}={example}.",
        )
    ckpt_path = cfg.ckpt_path
    _require(
        ckpt_path is None or (isinstance(ckpt_path, str) and ckpt_path.strip() != ""),
        f"ckpt_path={ckpt_path!r} is not a checkpoint; give ckpt_path=last (this run dir's "
        "last.ckpt), a .ckpt file, or leave it out to start afresh.",
    )


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first setting that cannot work (``ckpt_path`` aside)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    seed = c["seed"]
    _require(
        _is_whole(seed) and SEED_RANGE[0] <= seed <= SEED_RANGE[1],
        f"seed={seed!r} must be a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]}, e.g. seed=0.",
    )
    check_optimizer(c["optimizer"])
    check_data(c["data"])
    check_trainer(c["trainer"])
    check_step(c["step"])
    check_model(c["model"])
    check_loss(c["loss"])
    check_scheduler(c.get("scheduler"), c["optimizer"])
    _require(
        "early_stopping" not in c,  # a config written before it moved would be ignored
        "early_stopping.patience is now callbacks.early_stopping.patience; move it there.",
    )
    check_loggers(c.get("logger") or {})
    patience = (c.get("callbacks") or {}).get("early_stopping", {}).get("patience")
    _require(
        patience is None or (_is_whole(patience) and patience >= 1),
        f"callbacks.early_stopping.patience={patience!r} must be a whole number of at least 1 "
        "(epochs without a better val/acc), or null to train all trainer.max_epochs.",
    )


def check_loggers(loggers: dict) -> None:
    for name, logger in loggers.items():
        package = missing_package(logger.get("_target_", ""))
        _require(
            package is None,
            f"logger={name} needs the {package} package, which the trackers extra "
            "installs: pip install -e '.[trackers]'.",
        )


def check_optimizer(optimizer: dict) -> None:
    lr = optimizer.get("lr")
    _require(_is_number(lr), f"optimizer.lr={lr!r} is not a number; write it like optimizer.lr=0.001.")
    _require(
        math.isfinite(lr) and lr > 0,
        f"optimizer.lr={lr} must be a positive number; try 0.001 for adam or 0.01 for sgd.",
    )
    for key in ("weight_decay", "momentum", "eps"):
        value = optimizer.get(key, 0)
        _require(_is_number(value) and value >= 0, f"optimizer.{key}={value!r} must be a number of at least 0.")
    if optimizer.get("nesterov"):
        _require(
            optimizer.get("momentum", 0) > 0 and optimizer.get("dampening", 0) == 0,
            "optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0; "
            "add optimizer.momentum=0.9.",
        )
    betas = optimizer.get("betas")
    if betas is not None:
        _require(
            isinstance(betas, list) and len(betas) == 2 and all(_is_number(b) and 0 <= b < 1 for b in betas),
            f"optimizer.betas={betas!r} must be two numbers in [0, 1), e.g. optimizer.betas=[0.9,0.999].",
        )


def check_data(data: dict) -> None:
    for key in ("batch_size", "eval_batch_size"):
        size = data[key]
        _require(
            _is_whole(size) and size >= 1,
            f"data.{key}={size!r} must be a whole number of at least 1 (1 is allowed: one image per step).",
        )
    val_size, split_seed = data["val_size"], data["split_seed"]
    _require(
        _is_number(val_size),
        f"data.val_size={val_size!r} is not a number; give a count like 10000 or a fraction like 0.1.",
    )
    _require(_is_whole(split_seed), f"data.split_seed={split_seed!r} must be a whole number.")
    try:
        n_train = TRAIN_SIZE - validation_count(val_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _require(
        data["batch_size"] <= n_train,
        f"data.batch_size={data['batch_size']} is larger than the {n_train} training images "
        f"({TRAIN_SIZE} minus data.val_size={val_size}); use at most {n_train}.",
    )
    check_data_dir(data["data_dir"])


def check_data_dir(data_dir: str) -> None:
    """The data dir must be writable, unless the parsed cache is there already (it is only read)."""
    if mnist_arrays.cache_path(data_dir).is_file():
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
    raise ConfigError(f"cannot write to data_dir {path} ({problem}); set data.data_dir to a writable folder.")


def check_step(step: dict) -> None:
    cuda_graph, check_every, threshold = step["cuda_graph"], step["check_every"], step["divergence_threshold"]
    _require(
        cuda_graph in ("auto", "on", "off"),
        f"step.cuda_graph={cuda_graph!r} is not a choice; use auto (capture on a GPU when "
        "it can), on (fail if it cannot) or off.",
    )
    _require(
        _is_whole(check_every) and check_every >= 1,
        f"step.check_every={check_every!r} must be a whole number of at least 1 (steps between "
        "checks of the training loss).",
    )
    _require(
        _is_number(threshold) and threshold > 0,
        f"step.divergence_threshold={threshold!r} must be a positive number (a training loss "
        "above it counts as diverged), e.g. 10000.",
    )


# The Lightning Trainer arguments train.build_trainer sets from other settings (a trainer key
# would be passed twice): each with what to write instead, where there is something.
SET_BY_TRAIN = {
    "enable_checkpointing": " (to train without checkpoints, write ~callbacks.checkpoint)",
    "logger": " (TensorBoard is always written; logger=csv, mlflow or wandb adds a tracker)",
    "callbacks": " (the callbacks group chooses them)",
    "enable_progress_bar": " (callbacks.progress_bar shows one when a terminal watches)",
    "plugins": "",
    "enable_model_summary": "",
    "num_sanity_val_steps": "",
    "use_distributed_sampler": "",
    "log_every_n_steps": "",
}


def check_trainer(trainer: dict) -> None:
    epochs = trainer["max_epochs"]
    _require(_is_whole(epochs) and epochs >= 1, f"trainer.max_epochs={epochs!r} must be a whole number of at least 1.")
    limit = trainer.get("limit_train_batches")
    _require(
        limit is None or (_is_whole(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1),
        f"trainer.limit_train_batches={limit!r} trains on no batch; give a number of batches "
        "(at least 1), a fraction of them in (0, 1], or null for all.",
    )
    test_limit = trainer.get("limit_test_batches")
    _require(
        test_limit is None
        or (_is_whole(test_limit) and test_limit >= 1)
        or (isinstance(test_limit, float) and 0 < test_limit <= 1),
        f"trainer.limit_test_batches={test_limit!r} tests on no batch, and a run's result is its test; "
        "give a number of batches (at least 1), a fraction of them in (0, 1], or null for all.",
    )
    for key, instead in SET_BY_TRAIN.items():
        _require(
            key not in trainer,
            f"trainer.{key} is set by mnist_lab.train itself, not by the trainer group; drop that override{instead}.",
        )
    precision = str(trainer.get("precision", "32-true"))
    _require(
        precision not in ("16", "16-mixed", "16-true"),
        f"trainer.precision={precision} is float16, which needs loss scaling that the manual "
        "training step does not do (and on a CPU Lightning would train in bfloat16 instead); "
        "use trainer.precision=bf16-mixed, or 32-true.",
    )
    if str(trainer.get("accelerator", "auto")) in ("gpu", "cuda"):  # ~trainer.accelerator: "auto"
        _require(
            torch.cuda.is_available(),
            f"trainer.accelerator={trainer['accelerator']} (trainer=gpu) needs a CUDA GPU, "
            "but PyTorch sees none on this machine; use trainer=cpu, or trainer=auto to use "
            "a GPU only when there is one.",
        )
        devices, count = trainer.get("devices", 1), torch.cuda.device_count()
        _require(
            not _is_whole(devices) or devices <= count,
            f"trainer.devices={devices} but this machine has {count} GPU(s); use trainer.devices={count}.",
        )


WIDTH_EXAMPLES = {
    "hidden": "[256,128] ([] is softmax regression)",
    "fc": "[128]",
    "channels": "[32,64]",
    "kernel_sizes": "[3,3]",
}


def check_model(model: dict) -> None:
    """The keys of ``models.MLP`` and ``models.CNN``; a model of the user's own is judged by its
    constructor (its error's first line), whatever its keys are called."""
    if not str(model.get("_target_")).startswith("mnist_lab.models."):
        return
    for key, example in WIDTH_EXAMPLES.items():
        if key in model:
            widths = model[key]
            _require(
                isinstance(widths, list) and all(_is_whole(w) and w >= 1 for w in widths),
                f"model.{key}={widths!r} must be a list of positive whole numbers, e.g. model.{key}={example}.",
            )
    for key in ("dropout", "conv_dropout"):
        if key in model:
            p = model[key]
            _require(
                _is_number(p) and 0 <= p < 1,
                f"model.{key}={p!r} must be a number in [0, 1) (the fraction of units "
                f"zeroed in training), e.g. model.{key}=0.5.",
            )
    if "activation" in model:
        _require(
            model["activation"] in ACTIVATIONS,
            f"model.activation={model['activation']!r} is not one of "
            f"{', '.join(ACTIVATIONS)}; e.g. model.activation=relu.",
        )


def check_loss(loss: dict) -> None:
    smoothing = loss.get("label_smoothing", 0.0)
    _require(
        _is_number(smoothing) and 0 <= smoothing <= 1,
        f"loss.label_smoothing={smoothing!r} must be a number in [0, 1], e.g. 0.1.",
    )


def check_scheduler(scheduler: dict | None, optimizer: dict) -> None:
    if not scheduler:
        return
    name = scheduler["_target_"].rsplit(".", 1)[-1]
    for key in ("step_size", "T_max"):
        if key in scheduler:
            value = scheduler[key]
            _require(
                _is_whole(value) and value >= 1,
                f"scheduler.{key}={value!r} must be a whole number of epochs, at least 1.",
            )
    for key in ("gamma", "max_lr"):
        if key in scheduler:
            value = scheduler[key]
            _require(_is_number(value) and value > 0, f"scheduler.{key}={value!r} must be a positive number.")
    if name == "ReduceLROnPlateau":
        _require(
            scheduler.get("mode") == "max",
            f"scheduler.mode={scheduler.get('mode')!r}: scheduler=plateau watches val/acc, "
            "which should go up, so it needs scheduler.mode=max.",
        )
        factor = scheduler.get("factor")
        _require(
            _is_number(factor) and 0 < factor < 1, f"scheduler.factor={factor!r} must be a number in (0, 1), e.g. 0.1."
        )
    if name == "OneCycleLR":
        pct = scheduler.get("pct_start")
        _require(_is_number(pct) and 0 < pct < 1, f"scheduler.pct_start={pct!r} must be in (0, 1), e.g. 0.3.")
        has_momentum = "momentum" in optimizer or "betas" in optimizer
        _require(
            not scheduler.get("cycle_momentum") or has_momentum,
            f"scheduler.cycle_momentum=true needs an optimizer with momentum or betas, and "
            f"{optimizer['_target_'].rsplit('.', 1)[-1]} has neither; use "
            "scheduler.cycle_momentum=false or another optimizer "
            "(sgd, adam, adamw, rmsprop).",
        )


def out_of_memory(error: BaseException) -> str | None:
    """Which memory ``error`` says ran out, "GPU" or "CPU", or None if it is no out-of-memory
    error: torch raises ``torch.OutOfMemoryError`` when a GPU's memory runs out, and its CPU
    allocator a RuntimeError ("DefaultCPUAllocator: can't allocate memory: ...")."""
    if isinstance(error, torch.OutOfMemoryError):
        return "GPU"
    text = str(error) if isinstance(error, RuntimeError) else ""
    if "out of memory" in text or "can't allocate memory" in text:
        return "CPU" if "CPU" in text else "GPU"
    return None


def out_of_memory_message(cfg: DictConfig, memory: str = "GPU", pack: int = 1) -> str:
    """What to lower when the ``memory`` ("GPU" or "CPU") runs out, in a run or in a pack of
    ``pack`` jobs (run.experiment and packed.training raise it in place of torch's error)."""
    batches = f"data.batch_size={cfg.data.batch_size} and data.eval_batch_size={cfg.data.eval_batch_size}"
    smaller_eval = f"data.eval_batch_size={max(cfg.data.eval_batch_size // 4, 1)}"
    elsewhere = ", or use trainer=cpu" if memory == "GPU" else ""
    if pack > 1:  # a pack trains its jobs' batches at once, and evaluates in chunks of one job's batch
        fewer = f"{max(pack // 2, 2)}, or 1 to train each job alone" if pack > 2 else "1: each job alone"
        return (
            f"the {memory} ran out of memory training a pack of {pack} jobs with {batches} (validation and "
            f"test batches); train fewer jobs per pack first (hydra.launcher.pack_size={fewer}), then lower "
            f"data.batch_size, data.eval_batch_size (e.g. {smaller_eval}) or the model's size{elsewhere}."
        )
    return (
        f"the {memory} ran out of memory with {batches} (validation and test batches); lower "
        f"data.eval_batch_size first (e.g. {smaller_eval}), then data.batch_size or the model's size{elsewhere}."
    )


def as_config_error(error: BaseException, cfg: DictConfig, pack: int = 1) -> BaseException:
    """``error`` itself, or, for an out-of-memory error, the ``ConfigError`` that says what to
    lower (``out_of_memory_message``)."""
    memory = out_of_memory(error)
    return error if memory is None else ConfigError(out_of_memory_message(cfg, memory, pack))
