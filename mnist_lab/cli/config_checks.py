"""Checks of a run's settings, made once at start, before any data is touched.

Overrides are typed by hand, so a typo or a wild value is normal use. Each check turns one into
a sentence that says what is wrong, the value seen and what to do (a ``ConfigError``), instead
of a traceback from deep inside torch or Lightning minutes later. ``check_required`` and
``check_config`` are the entry points; the checks of the data, trainer, step and logger groups
are here, those of what is trained (model, loss, optimizer, scheduler) in learning_checks.py.
(Hydra's own errors, an unknown option or key, get the same treatment in hydra_errors.py.)
docs/reliability.md lists every case and the test that checks it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from mnist_lab.cli.config_error import ConfigError, is_number, is_whole, require
from mnist_lab.cli.hydra_errors import group_not_set
from mnist_lab.cli.learning_checks import check_loss, check_model, check_optimizer, check_scheduler
from mnist_lab.data import mnist_arrays
from mnist_lab.data.datamodule import TRAIN_SIZE, validation_count
from mnist_lab.tracking.trackers import missing_package

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
        require(
            OmegaConf.select(cfg, key, default="<missing>") != "<missing>",
            f"{key} is missing (an override such as ~{key} removed it); drop that override, "
            f"or set it, e.g. {key}={example}.",
        )
    ckpt_path = cfg.ckpt_path
    require(
        ckpt_path is None or (isinstance(ckpt_path, str) and ckpt_path.strip() != ""),
        f"ckpt_path={ckpt_path!r} is not a checkpoint; give ckpt_path=last (this run dir's "
        "last.ckpt), a .ckpt file, or leave it out to start afresh.",
    )


def check_config(cfg: DictConfig) -> None:
    """Raise ``ConfigError`` for the first setting that cannot work (``ckpt_path`` aside)."""
    c = OmegaConf.to_container(cfg, resolve=True)
    seed = c["seed"]
    require(
        is_whole(seed) and SEED_RANGE[0] <= seed <= SEED_RANGE[1],
        f"seed={seed!r} must be a whole number from {SEED_RANGE[0]} to {SEED_RANGE[1]}, e.g. seed=0.",
    )
    check_optimizer(c["optimizer"])
    check_data(c["data"])
    check_trainer(c["trainer"])
    check_step(c["step"])
    check_model(c["model"])
    check_loss(c["loss"])
    check_scheduler(c.get("scheduler"), c["optimizer"])
    require(
        "early_stopping" not in c,  # a config written before it moved would be ignored
        "early_stopping.patience is now callbacks.early_stopping.patience; move it there.",
    )
    check_loggers(c.get("logger") or {})
    patience = (c.get("callbacks") or {}).get("early_stopping", {}).get("patience")
    require(
        patience is None or (is_whole(patience) and patience >= 1),
        f"callbacks.early_stopping.patience={patience!r} must be a whole number of at least 1 "
        "(epochs without a better val/acc), or null to train all trainer.max_epochs.",
    )


def check_loggers(loggers: dict) -> None:
    for name, logger in loggers.items():
        package = missing_package(logger.get("_target_", ""))
        require(
            package is None,
            f"logger={name} needs the {package} package, which the trackers extra "
            "installs: pip install -e '.[trackers]'.",
        )


def check_data(data: dict) -> None:
    for key in ("batch_size", "eval_batch_size"):
        size = data[key]
        require(
            is_whole(size) and size >= 1,
            f"data.{key}={size!r} must be a whole number of at least 1 (1 is allowed: one image per step).",
        )
    val_size, split_seed = data["val_size"], data["split_seed"]
    require(
        is_number(val_size),
        f"data.val_size={val_size!r} is not a number; give a count like 10000 or a fraction like 0.1.",
    )
    require(is_whole(split_seed), f"data.split_seed={split_seed!r} must be a whole number.")
    try:
        n_train = TRAIN_SIZE - validation_count(val_size)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    require(
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
    require(
        cuda_graph in ("auto", "on", "off"),
        f"step.cuda_graph={cuda_graph!r} is not a choice; use auto (capture on a GPU when "
        "it can), on (fail if it cannot) or off.",
    )
    require(
        is_whole(check_every) and check_every >= 1,
        f"step.check_every={check_every!r} must be a whole number of at least 1 (steps between "
        "checks of the training loss).",
    )
    require(
        is_number(threshold) and threshold > 0,
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
    require(is_whole(epochs) and epochs >= 1, f"trainer.max_epochs={epochs!r} must be a whole number of at least 1.")
    limit = trainer.get("limit_train_batches")
    require(
        limit is None or (is_whole(limit) and limit >= 1) or (isinstance(limit, float) and 0 < limit <= 1),
        f"trainer.limit_train_batches={limit!r} trains on no batch; give a number of batches "
        "(at least 1), a fraction of them in (0, 1], or null for all.",
    )
    test_limit = trainer.get("limit_test_batches")
    require(
        test_limit is None
        or (is_whole(test_limit) and test_limit >= 1)
        or (isinstance(test_limit, float) and 0 < test_limit <= 1),
        f"trainer.limit_test_batches={test_limit!r} tests on no batch, and a run's result is its test; "
        "give a number of batches (at least 1), a fraction of them in (0, 1], or null for all.",
    )
    for key, instead in SET_BY_TRAIN.items():
        require(
            key not in trainer,
            f"trainer.{key} is set by mnist_lab.train itself, not by the trainer group; drop that override{instead}.",
        )
    precision = str(trainer.get("precision", "32-true"))
    require(
        precision not in ("16", "16-mixed", "16-true"),
        f"trainer.precision={precision} is float16, which needs loss scaling that the manual "
        "training step does not do (and on a CPU Lightning would train in bfloat16 instead); "
        "use trainer.precision=bf16-mixed, or 32-true.",
    )
    if str(trainer.get("accelerator", "auto")) in ("gpu", "cuda"):  # ~trainer.accelerator: "auto"
        require(
            torch.cuda.is_available(),
            f"trainer.accelerator={trainer['accelerator']} (trainer=gpu) needs a CUDA GPU, "
            "but PyTorch sees none on this machine; use trainer=cpu, or trainer=auto to use "
            "a GPU only when there is one.",
        )
        devices, count = trainer.get("devices", 1), torch.cuda.device_count()
        require(
            not is_whole(devices) or devices <= count,
            f"trainer.devices={devices} but this machine has {count} GPU(s); use trainer.devices={count}.",
        )
