"""The start-up checks of what is trained and how: the ``model``, ``loss``, ``optimizer`` and
``scheduler`` groups (``config_checks.check_config`` calls them; docs/reliability.md lists every
case and its test)."""

from __future__ import annotations

import math

from mnist_lab.cli.config_error import is_number, is_whole, require
from mnist_lab.models import ACTIVATIONS


def check_optimizer(optimizer: dict) -> None:
    lr = optimizer.get("lr")
    require(is_number(lr), f"optimizer.lr={lr!r} is not a number; write it like optimizer.lr=0.001.")
    require(
        math.isfinite(lr) and lr > 0,
        f"optimizer.lr={lr} must be a positive number; try 0.001 for adam or 0.01 for sgd.",
    )
    for key in ("weight_decay", "momentum", "eps"):
        value = optimizer.get(key, 0)
        require(is_number(value) and value >= 0, f"optimizer.{key}={value!r} must be a number of at least 0.")
    if optimizer.get("nesterov"):
        require(
            optimizer.get("momentum", 0) > 0 and optimizer.get("dampening", 0) == 0,
            "optimizer.nesterov=true needs optimizer.momentum > 0 and optimizer.dampening=0; "
            "add optimizer.momentum=0.9.",
        )
    betas = optimizer.get("betas")
    if betas is not None:
        require(
            isinstance(betas, list) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
            f"optimizer.betas={betas!r} must be two numbers in [0, 1), e.g. optimizer.betas=[0.9,0.999].",
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
            require(
                isinstance(widths, list) and all(is_whole(w) and w >= 1 for w in widths),
                f"model.{key}={widths!r} must be a list of positive whole numbers, e.g. model.{key}={example}.",
            )
    for key in ("dropout", "conv_dropout"):
        if key in model:
            p = model[key]
            require(
                is_number(p) and 0 <= p < 1,
                f"model.{key}={p!r} must be a number in [0, 1) (the fraction of units "
                f"zeroed in training), e.g. model.{key}=0.5.",
            )
    if "activation" in model:
        require(
            model["activation"] in ACTIVATIONS,
            f"model.activation={model['activation']!r} is not one of "
            f"{', '.join(ACTIVATIONS)}; e.g. model.activation=relu.",
        )


def check_loss(loss: dict) -> None:
    smoothing = loss.get("label_smoothing", 0.0)
    require(
        is_number(smoothing) and 0 <= smoothing <= 1,
        f"loss.label_smoothing={smoothing!r} must be a number in [0, 1], e.g. 0.1.",
    )


def check_scheduler(scheduler: dict | None, optimizer: dict) -> None:
    if not scheduler:
        return
    name = scheduler["_target_"].rsplit(".", 1)[-1]
    for key in ("step_size", "T_max"):
        if key in scheduler:
            value = scheduler[key]
            require(
                is_whole(value) and value >= 1,
                f"scheduler.{key}={value!r} must be a whole number of epochs, at least 1.",
            )
    for key in ("gamma", "max_lr"):
        if key in scheduler:
            value = scheduler[key]
            require(is_number(value) and value > 0, f"scheduler.{key}={value!r} must be a positive number.")
    if name == "ReduceLROnPlateau":
        require(
            scheduler.get("mode") == "max",
            f"scheduler.mode={scheduler.get('mode')!r}: scheduler=plateau watches val/acc, "
            "which should go up, so it needs scheduler.mode=max.",
        )
        factor = scheduler.get("factor")
        require(
            is_number(factor) and 0 < factor < 1, f"scheduler.factor={factor!r} must be a number in (0, 1), e.g. 0.1."
        )
    if name == "OneCycleLR":
        pct = scheduler.get("pct_start")
        require(is_number(pct) and 0 < pct < 1, f"scheduler.pct_start={pct!r} must be in (0, 1), e.g. 0.3.")
        has_momentum = "momentum" in optimizer or "betas" in optimizer
        require(
            not scheduler.get("cycle_momentum") or has_momentum,
            f"scheduler.cycle_momentum=true needs an optimizer with momentum or betas, and "
            f"{optimizer['_target_'].rsplit('.', 1)[-1]} has neither; use "
            "scheduler.cycle_momentum=false or another optimizer "
            "(sgd, adam, adamw, rmsprop).",
        )
