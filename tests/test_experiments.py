"""Every study in conf/experiment/ (found by glob: a study added there is tested with no edit
here): every point of its grid composes and builds, and its first job trains (in this process,
tiny limits, synthetic data); the shipped studies' settings are those their issue asked for."""

from __future__ import annotations

import itertools

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import instantiate

from mnist_lab.run.experiment import run
from mnist_lab.train import CONF_DIR
from tests.conftest import compose_train

EXPERIMENTS = sorted(path.stem for path in (CONF_DIR / "experiment").glob("*.yaml"))
TINY = ["debug=tiny", "~callbacks.images"]  # conf/debug/tiny.yaml; the images are tested elsewhere

# What the issue asks of each study: (model target, optimizer, epochs, grid size).
STUDIES = {
    "mlp_lr": ("MLP", "Adam", 10, 3),
    "mlp_batch": ("MLP", "Adam", 10, 4),
    "mlp_depth": ("MLP", "Adam", 10, 3),
    "mlp_width": ("MLP", "Adam", 10, 3),
    "mlp_loss": ("MLP", "Adam", 10, 3),
    "mlp_loss_softmax": ("MLP", "Adam", 10, 3),
    "softmax_batch": ("MLP", "SGD", 32, 5),
    "softmax_lr": ("MLP", "SGD", 128, 7),
    "softmax_momentum": ("MLP", "SGD", 128, 5),
    "softmax_decay": ("MLP", "SGD", 128, 3),
    "softmax_adam": ("MLP", "Adam", 128, 2),
    "cnn_example": ("CNN", "Adadelta", 14, 1),
    "mlp512_lr": ("MLP", "SGD", 14, 10),
    "mlp512_gamma": ("MLP", "SGD", 14, 4),
    "mlp512_regularization": ("MLP", "SGD", 14, 8),
    "mlp512_adam": ("MLP", "Adam", 14, 9),
    "cnn_small_arch": ("CNN", "SGD", 1, 3),
    "cnn_small_lr": ("CNN", "SGD", 1, 2),
    "cnn_small_batch": ("CNN", "SGD", 1, 2),
    "mlp4_wide": ("MLP", "SGD", 30, 1),
}


def grid(name: str, extra: list[str] = ()) -> list[list[str]]:
    """The overrides of every job ``python -m mnist_lab.train -m experiment=<name>`` runs."""
    cfg = compose_train(f"experiment={name}", *extra, hydra=True)
    params = cfg.hydra.sweeper.get("params") or {}
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    axes = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] for o in parsed]
    return [list(job) for job in itertools.product(*axes)]


def composed(name: str, overrides: list[str]):
    return compose_train(f"experiment={name}", *overrides)


def test_every_study_the_issue_asked_for_is_shipped():
    assert set(STUDIES) <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", sorted(STUDIES))
def test_study_settings_match_the_issue(name):
    model, optimizer, epochs, jobs = STUDIES[name]
    cfg = composed(name, [])
    assert cfg.model._target_.endswith(f".{model}")
    assert cfg.optimizer._target_.endswith(f".{optimizer}")
    assert cfg.trainer.max_epochs == epochs and len(grid(name)) == jobs
    # hidden layers of 128 (mlp_lr: two, as lab 003's model), ReLU, Adam, 80/20 split, batch 64
    if name.startswith("mlp_"):
        assert cfg.data.val_size == 0.2 and cfg.model.activation == "relu"
        assert cfg.model.hidden == ([128, 128] if name == "mlp_lr" else [128]) and cfg.data.batch_size == 64
        lab_003 = name != "mlp_loss_softmax"  # lab 003's lr 0.01 and x / 255 pixels (base/mlp.yaml)
        assert cfg.optimizer.lr == (0.01 if lab_003 else 0.001) and cfg.data.normalize is not lab_003
    if name.startswith("cnn_small"):  # lab 002: SGD lr 0.01 with momentum, batch 32, one epoch
        assert cfg.optimizer.lr == 0.01 and cfg.optimizer.momentum == 0.5 and cfg.data.batch_size == 32
    if name.startswith("softmax_") and name != "softmax_adam":
        assert cfg.model.hidden == [] and cfg.optimizer.momentum == 0.9
    if name.startswith(("cnn_example", "mlp512")):
        assert cfg.scheduler._target_.endswith(".StepLR")
    if name.startswith("mlp512"):  # lab 000's base network, the pytorch/examples batch and schedule
        assert cfg.model.hidden == [512, 256] and cfg.data.batch_size == 64 and cfg.scheduler.step_size == 1


def test_softmax_decay_schedules_are_constant_halving_and_exponential():
    gammas = {}
    for job in grid("softmax_decay"):
        cfg = composed("softmax_decay", job)
        gammas[job[0]] = (cfg.scheduler.step_size, cfg.scheduler.gamma)
    assert gammas["decay=constant"] == (1, 1.0) and gammas["decay=step"] == (10, 0.5)
    step_size, gamma = gammas["decay=exponential"]
    assert step_size == 1 and abs(gamma**10 - 0.5) < 0.01


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_job_of_the_study_builds_its_net_loss_and_optimizer(name):
    for job in grid(name):
        cfg = composed(name, job)
        net = instantiate(cfg.model)
        instantiate(cfg.loss)
        optimizer = instantiate(cfg.optimizer)(net.parameters())
        if cfg.get("scheduler"):
            instantiate(cfg.scheduler)(optimizer)


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_study_trains(name, tmp_path, monkeypatch, synthetic_data_dir):
    monkeypatch.setenv("MNIST_LAB_DATA_DIR", str(synthetic_data_dir))
    job = grid(name, TINY)[0]
    metrics = run(composed(name, [*job, *TINY]), tmp_path, job)
    assert metrics["status"] == "ok" and metrics["epochs"] == 1, (job, metrics.get("error"))
