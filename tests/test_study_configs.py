"""The experiment files compose from shared bases (conf/experiment/base/); every study still
composes to what it was before that refactoring (commit 3eb508a, recorded in
study_configs_3eb508a.json), except the changes listed in CHANGED, made on purpose, and the
studies in NEW, which replace those in REPLACED. Studies added since are not held to the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from mnist_lab.train import CONF_DIR

RECORD = Path(__file__).with_name("study_configs_3eb508a.json")


def flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def study_settings(name: str, conf_dir: Path = CONF_DIR) -> dict:
    """What ``experiment=<name>`` changes from the default run (dotted key: value; a key the
    study removes maps to None), and its grid (``hydra.sweeper.params``)."""
    with initialize_config_dir(str(conf_dir), version_base="1.3"):
        default = flat(OmegaConf.to_container(compose("train")))
        cfg = compose("train", overrides=[f"experiment={name}"], return_hydra_config=True)
    grid = OmegaConf.to_container(cfg.hydra.sweeper.params) if cfg.hydra.sweeper.get("params") else {}
    study = flat({k: v for k, v in OmegaConf.to_container(cfg).items() if k != "hydra"})
    changed = {key: value for key, value in study.items() if default.get(key, "<absent>") != value}
    changed.update({key: None for key in default if key not in study})
    return {"settings": changed, "grid": grid}


# The studies changed on purpose, to the set-up of the lab each reproduces (docs/studies.md):
# what each now composes to beyond its record. "grid" replaces hydra.sweeper.params entries.
LAB_003 = {"optimizer.lr": 0.01, "data.normalize": False}  # the lab's lr and its x / 255 pixels
LAB_002 = {"optimizer.momentum": 0.5, "data.val_size": 1000}  # momentum; 59,000 training images
LAB_004 = {"data.val_size": 5000, "data.normalize": False}  # 55,000 training images, x / 255
CHANGED = {
    "mlp_lr": {**LAB_003, "model.hidden": [128, 128]},
    "mlp_batch": LAB_003,
    "mlp_width": LAB_003,
    "mlp_depth": {**LAB_003, "grid": {"model.hidden": "choice([128],[128,128],[128,128,128])"}},
    "mlp_loss": {**LAB_003, "grid": {"loss": "mse_logits,l1_logits,ce"}},  # raw outputs
    "cnn_small_arch": LAB_002,
    "cnn_small_batch": LAB_002,
    "cnn_small_lr": LAB_002,
    "softmax_batch": {**LAB_004, "data.batch_size": 5000},  # the base's; every job sets its own
    "softmax_lr": {**LAB_004, "grid": {"optimizer.lr": "0.4,0.43,0.45,0.5,0.53,0.56,0.6"}},  # the lab's rates
    "softmax_momentum": LAB_004,
    "softmax_decay": LAB_004,
    "softmax_adam": {**LAB_004, "optimizer.betas": [0.9, 0.99]},  # the lab's Adam betas
}
RENAMED = {"mlp_loss_softmax": "mlp_loss"}  # the softmax-probability mlp_loss, unchanged

# Lab 000's sections 1-2 ran on its own base network, an MLP 784-512-256-10, not on the
# pytorch/examples CNN (docs/studies.md, lab 000): the cnn_example_* grids became mlp512_*, with
# plain SGD (momentum 0), StepLR after every epoch, batch 64 (the default), 14 epochs, 59,000
# training images, and the lab's points in each grid.
LAB_000 = {
    "data.val_size": 1000,
    "model.hidden": [512, 256],
    "optimizer._target_": "torch.optim.SGD",
    "optimizer.lr": 0.0001,
    "optimizer.momentum": 0.0,
    "optimizer.nesterov": False,
    "optimizer.dampening": 0.0,
    "optimizer.betas": None,
    "optimizer.eps": None,
    "optimizer.amsgrad": None,
    "scheduler._target_": "torch.optim.lr_scheduler.StepLR",
    "scheduler._partial_": True,
    "scheduler.step_size": 1,
    "scheduler.gamma": 0.7,
    "trainer.max_epochs": 14,
}
# Adam lr 0.001 is the default run's optimizer (conf/train.yaml): no optimizer key differs from it.
LAB_000_ADAM = {k: v for k, v in LAB_000.items() if not k.startswith("optimizer.")}
NEW = {
    "mlp512_lr": {
        "settings": LAB_000,
        "grid": {"optimizer.lr": "0.0001,0.001,0.01,0.1,1.0", "scheduler.gamma": "0.7,0.8"},
    },
    "mlp512_gamma": {  # lr 0.001, the default run's: no longer a difference
        "settings": {k: v for k, v in LAB_000.items() if k != "optimizer.lr"},
        "grid": {"scheduler.gamma": "0.7,0.8,0.85,0.9"},
    },
    "mlp512_regularization": {
        "settings": {**LAB_000, "optimizer.lr": 0.1, "scheduler.gamma": 0.8},
        "grid": {"optimizer.weight_decay": "0,0.001", "model.dropout": "0,0.2,0.5,0.8"},
    },
    "mlp512_adam": {
        "settings": {**LAB_000_ADAM, "scheduler.gamma": 0.8, "model.dropout": 0.8},
        "grid": {"optimizer.lr": "0.001,0.01,0.1", "model.dropout": "0.2,0.5,0.8"},
    },
}
REPLACED = {"cnn_example_lr", "cnn_example_gamma", "cnn_example_regularization", "cnn_example_adam"}
MOVED = {"early_stopping.patience": "callbacks.early_stopping.patience"}  # keys moved since 3eb508a
STUDIES = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))


def expected(name: str) -> dict:
    if name in NEW:
        return NEW[name]
    record = json.loads(RECORD.read_text())
    study = record[RENAMED.get(name, name)]
    study["settings"] = {MOVED.get(key, key): value for key, value in study["settings"].items()}
    changes = dict(CHANGED.get(name, {}))
    study["grid"].update(changes.pop("grid", {}))
    study["settings"].update(changes)
    return study


# The studies this record speaks for; any other file in conf/experiment/ (a study of your own) is
# tested by tests/test_experiments.py, found by glob, with no edit here.
KNOWN = (set(json.loads(RECORD.read_text())) - REPLACED) | set(RENAMED) | set(NEW)


def test_every_recorded_renamed_or_new_study_is_still_shipped():
    assert KNOWN <= set(STUDIES)


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_the_study_composes_as_before_except_the_listed_changes(name):
    assert study_settings(name) == expected(name)


def test_no_study_repeats_a_default():
    for path in (CONF_DIR / "experiment").rglob("*.yaml"):
        assert "override /loss: ce" not in path.read_text(), path  # ce is conf/train.yaml's default
