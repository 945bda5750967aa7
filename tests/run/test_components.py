"""Every model, loss, optimizer and scheduler config builds and does what it says."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from mnist_lab.losses import OneHotLoss
from mnist_lab.train import CONF_DIR as CONF
from tests.conftest import compose_train


def config(*overrides: str):
    return compose_train(*overrides)


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize("model", options("model"))
def test_each_model_maps_images_to_ten_logits(model):
    net = instantiate(config(f"model={model}").model)
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)


def test_model_sizes_match_their_descriptions():
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(instantiate(config("model=linear").model)) == 784 * 10 + 10
    assert count(instantiate(config("model=mlp", "model.hidden=[]").model)) == 784 * 10 + 10
    cnn = instantiate(config("model=cnn").model)  # pytorch/examples: 1,199,882 parameters
    assert count(cnn) == 1_199_882
    deep = instantiate(
        config(
            "model=mlp", "model.hidden=[64,32]", "model.batch_norm=true", "model.dropout=0.1", "model.activation=tanh"
        ).model
    )
    kinds = [type(m).__name__ for m in deep]
    assert kinds.count("Linear") == 3 and "BatchNorm1d" in kinds and "Tanh" in kinds and "Dropout" in kinds


@pytest.mark.parametrize("loss", options("loss"))
def test_each_loss_is_lowest_for_the_right_answer(loss):
    fn = instantiate(config(f"loss={loss}").loss)
    labels = torch.tensor([3, 7])
    right = torch.full((2, 10), -5.0)
    right[0, 3] = right[1, 7] = 5.0
    wrong = right.roll(1, dims=1)
    assert fn(right, labels) < fn(wrong, labels)


def test_mse_compares_probabilities_or_logits_with_one_hot():
    logits, labels = torch.zeros(1, 10), torch.tensor([0])
    assert OneHotLoss("mse", "probs")(logits, labels).item() == pytest.approx(((0.1 - 1) ** 2 + 9 * 0.01) / 10)
    assert OneHotLoss("mse", "logits")(logits, labels).item() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="choose one of mse, l1"):
        OneHotLoss("hinge")


@pytest.mark.parametrize("optimizer", options("optimizer"))
def test_each_optimizer_takes_a_step_that_lowers_the_loss(optimizer):
    torch.manual_seed(0)
    cfg = config(f"optimizer={optimizer}", "model=linear")
    net, loss_fn = instantiate(cfg.model), instantiate(cfg.loss)
    opt = instantiate(cfg.optimizer)(net.parameters())
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    before = loss_fn(net(x), y).item()
    for _ in range(5):
        opt.zero_grad()
        loss_fn(net(x), y).backward()
        opt.step()
    assert loss_fn(net(x), y).item() < before
    assert opt.param_groups[0]["lr"] == cfg.optimizer.lr  # optimizer.lr is the argument received


@pytest.mark.parametrize("scheduler", [s for s in options("scheduler") if s != "none"])
def test_each_scheduler_moves_the_learning_rate(scheduler):
    cfg = config(
        f"scheduler={scheduler}",
        "optimizer=sgd",
        "optimizer.lr=0.1",
        "scheduler.patience=0" if scheduler == "plateau" else "trainer.max_epochs=10",
    )
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    extra = {"total_steps": 100} if scheduler == "onecycle" else {}
    sched = instantiate(cfg.scheduler)(opt, **extra)
    start = opt.param_groups[0]["lr"]
    for _ in range(3):
        opt.step()
        sched.step(0.5) if scheduler == "plateau" else sched.step()
    assert opt.param_groups[0]["lr"] != start


def test_step_schedule_halves_every_ten_epochs():
    cfg = config("scheduler=step", "scheduler.step_size=10", "scheduler.gamma=0.5", "optimizer=sgd", "optimizer.lr=0.4")
    opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    sched = instantiate(cfg.scheduler)(opt)
    lrs = []
    for _ in range(25):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == lrs[9] == 0.4 and lrs[10] == 0.2 and lrs[20] == 0.1


@pytest.mark.parametrize(
    "optimizer, chosen, fused",
    [
        ("adam", [], True),
        ("adamw", [], True),
        ("adam", ["+optimizer.fused=false"], False),
        ("sgd", [], None),
    ],
)
def test_cpu_runs_use_the_fused_adam_kernel_unless_the_config_chooses(optimizer, chosen, fused):
    from mnist_lab.run.classifier import Classifier

    cfg = config(f"optimizer={optimizer}", *chosen)
    module = Classifier(instantiate(cfg.model), instantiate(cfg.loss), instantiate(cfg.optimizer))
    built = module.configure_optimizers()
    assert built.defaults.get("fused") == fused
