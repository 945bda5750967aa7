"""A packed job trains as its solo run does: each job of a pack, dropout included, makes the same
losses, step by step, as ``experiment.run`` (Lightning, the eager step, DeviceBatches) makes for
that job alone, whatever jobs share its pack; and its net comes back as an ordinary solo module."""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import QUICK, compose_train, pack_losses
from tests.float_tolerance import loss_mismatch, weights_mismatch

# 2,500 training images at batch 64: 40 steps an epoch, 200 steps in 5 epochs.
STEPS = 200
BASE = [*QUICK, "trainer.max_epochs=5", "data.batch_size=64"]

# Each case is one pack: the settings its jobs share, then each job's own settings (seed,
# optimizer and scheduler hyperparameters, loss).
CASES = {
    "linear_sgd_step": (
        ["model=linear", "optimizer=sgd", "scheduler=step", "scheduler.step_size=2", "scheduler.gamma=0.5"],
        [
            [
                "seed=1",
                "optimizer.lr=0.05",
                "optimizer.momentum=0.9",
                "optimizer.nesterov=true",
                "optimizer.weight_decay=0.001",
            ],
            ["seed=2", "optimizer.lr=0.1", "optimizer.momentum=0.5", "loss=mse", "scheduler.gamma=0.8"],
            ["seed=3", "optimizer.lr=0.02", "loss=l1", "loss.target=logits"],
        ],
    ),
    "mlp_bn_adam": (
        ["model=mlp", "model.hidden=[32]", "model.batch_norm=true", "optimizer=adam"],
        [
            ["seed=1", "optimizer.lr=0.001"],
            ["seed=2", "optimizer.lr=0.003", "optimizer.betas=[0.8,0.99]", "optimizer.weight_decay=0.0001", "loss=mse"],
        ],
    ),
    "mlp_bn_adamw_onecycle": (
        ["model=mlp", "model.hidden=[32,16]", "model.batch_norm=true", "optimizer=adamw", "scheduler=onecycle"],
        [
            ["seed=4", "optimizer.lr=0.003", "optimizer.weight_decay=0.05"],
            ["seed=5", "optimizer.lr=0.003", "optimizer.eps=1e-6", "scheduler.pct_start=0.5", "loss=l1"],
        ],
    ),
    "mlp_rmsprop": (
        ["model=mlp", "model.hidden=[32]", "optimizer=rmsprop"],
        [
            ["seed=6", "optimizer.lr=0.001"],
            [
                "seed=7",
                "optimizer.lr=0.00003",
                "optimizer.momentum=0.9",
                "optimizer.centered=true",
                "optimizer.weight_decay=0.0001",
                "optimizer.alpha=0.9",
            ],
        ],
    ),
    "linear_adadelta": (
        ["model=linear", "optimizer=adadelta"],
        [["seed=8", "optimizer.lr=0.2"], ["seed=9", "optimizer.lr=0.5", "optimizer.rho=0.8", "loss=mse"]],
    ),
    "cnn_sgd": (
        [
            "model=cnn",
            "model.channels=[4,8]",
            "model.fc=[16]",
            "model.conv_dropout=0",
            "model.dropout=0",
            "optimizer=sgd",
            "optimizer.momentum=0.9",
        ],
        [
            ["seed=10", "optimizer.lr=0.002"],
            ["seed=11", "optimizer.lr=0.05", "optimizer.weight_decay=0.001", "loss=mse"],
        ],
    ),
    # Dropout: each job draws its solo run's masks from its own stream (a rate of 0 draws none).
    "mlp_bn_dropout_adam": (
        ["model=mlp", "model.hidden=[32,16]", "model.batch_norm=true", "optimizer=adam"],
        [
            ["seed=12", "model.dropout=0.2", "optimizer.lr=0.001"],
            ["seed=13", "model.dropout=0.5", "optimizer.lr=0.003", "loss=mse"],
            ["seed=14", "model.dropout=0", "optimizer.lr=0.002"],
        ],
    ),
    "cnn_dropout_sgd": (
        ["model=cnn", "model.channels=[4,8]", "model.fc=[16]", "optimizer=sgd", "optimizer.momentum=0.9"],
        [
            ["seed=15", "model.conv_dropout=0.25", "model.dropout=0.5", "optimizer.lr=0.01"],
            ["seed=16", "model.conv_dropout=0.1", "model.dropout=0", "optimizer.lr=0.0015"],
        ],
    ),
}


def solo_step_losses(run_dir) -> list[float]:
    """Every optimizer step's training loss, as the solo run wrote it to TensorBoard."""
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    points = events.Scalars("train/loss")
    assert [p.step for p in points] == list(range(1, len(points) + 1))
    return [p.value for p in points]


def noise_only(net: torch.nn.Sequential) -> set[str]:
    """Entries that hold rounding noise, not learning: the bias of a linear layer right before
    batch norm gets a zero gradient up to rounding (batch norm subtracts the batch mean), which
    Adam-like optimizers scale up to steps of size lr; the batch norm's running mean follows it.
    The net's output does not depend on them in training, and two runs need not agree on them."""
    names = set()
    layers = list(net.named_children())
    for (name, layer), (next_name, next_layer) in zip(layers[:-1], layers[1:], strict=True):
        if isinstance(layer, torch.nn.Linear) and isinstance(next_layer, torch.nn.BatchNorm1d):
            names |= {f"{name}.bias", f"{next_name}.running_mean"}
    return names


def solo_run(tmp_path, cfg) -> tuple[torch.Tensor, int, dict]:
    """The solo run of ``cfg`` (``run.experiment.run``): its per-step losses, and the epoch and net weights
    of its last.ckpt."""
    from mnist_lab.run import experiment

    metrics = experiment.run(cfg, tmp_path, [])
    assert metrics["status"] == "ok"
    losses = torch.tensor(solo_step_losses(tmp_path))
    assert len(losses) == STEPS
    assert losses[-1] < losses[0] * 0.9, "the job should learn, or equal curves prove little"
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    return losses, checkpoint["epoch"], weights


def packed_run(cfgs) -> tuple[torch.Tensor, dict, list[set[str]]]:
    """The pack of ``cfgs`` trained: its per-step losses [steps, jobs], each job's solo net's
    weights at each epoch's end ({(epoch, job): state_dict}), and each job's ``noise_only``."""
    from mnist_lab.packed.pack import Pack
    from mnist_lab.packed.training import pack_epochs

    pack = Pack(cfgs)
    weights_after, losses = {}, []
    for epoch in pack_epochs(pack):
        losses.append(epoch.losses)
        weights_after.update({(pack.epoch - 1, i): pack.solo_net(i).state_dict() for i in range(len(cfgs))})
    return torch.cat(losses), weights_after, [noise_only(pack.solo_net(i)) for i in range(len(cfgs))]


def mismatches(packed, solos) -> list[tuple[str | None, str | None]]:
    """For each job: how its packed losses and its weights at its solo last.ckpt's epoch differ
    from its solo run's (None: within tests/float_tolerance.py's tolerance)."""
    losses, weights_after, skips = packed
    return [
        (
            loss_mismatch(losses[:, i], solo_losses),
            weights_mismatch(weights_after[epoch, i], solo_weights, STEPS, skips[i]),
        )
        for i, (solo_losses, epoch, solo_weights) in enumerate(solos)
    ]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_each_packed_job_makes_its_solo_runs_losses_and_weights(tmp_path, synthetic_data_dir, case):
    """200 steps: the same loss at every step, and job i's net, given back as a solo module,
    holds the weights of its solo run's last.ckpt (saved at the end of an epoch: Lightning writes
    last.ckpt only in epochs that improve val/acc), each within the float32 rounding that 200
    steps on another CPU's kernels can add up to (tests/float_tolerance.py)."""
    shared, jobs = CASES[case]
    cfgs = [compose_train(*BASE, f"data.data_dir={synthetic_data_dir}", *shared, *job) for job in jobs]
    packed = packed_run(cfgs)
    assert packed[0].shape == (STEPS, len(jobs))
    solos = [solo_run(tmp_path / str(i), cfg) for i, cfg in enumerate(cfgs)]
    for i, (loss, weights) in enumerate(mismatches(packed, solos)):
        assert loss is None and weights is None, f"job {i}: {loss or weights}"


def plant(monkeypatch, bug: str) -> None:
    """A mistake a packed implementation could make, put into this process's pack code."""
    from mnist_lab.packed.optimizer import PackedOptimizer
    from mnist_lab.packed.pack import Pack

    if bug in ("dropped_momentum", "lr_1_percent_high"):  # the schedules set each value through set
        set_hyperparameter = PackedOptimizer.set

        def planted(self, name, values):
            set_hyperparameter(self, name, values)
            if bug == "dropped_momentum" and name in ("momentum", "beta1"):  # SGD's, Adam's first moment
                self.hyper[name].zero_()
            if bug == "lr_1_percent_high" and name == "lr":
                self.hyper["lr"].mul_(1.01)

        monkeypatch.setattr(PackedOptimizer, "set", planted)
    elif bug == "jobs_0_and_2_swapped":  # job 0 trains job 2's settings and the other way round
        pack_init = Pack.__init__

        def swapped(self, cfgs, *args, **kwargs):
            pack_init(self, [cfgs[2], cfgs[1], cfgs[0], *cfgs[3:]], *args, **kwargs)

        monkeypatch.setattr(Pack, "__init__", swapped)


# the jobs each bug changes (a job without momentum has none to drop)
CHANGED = {"lr_1_percent_high": [0, 1, 2], "jobs_0_and_2_swapped": [0, 2]}
BUGS = {
    "linear_sgd_step": {"dropped_momentum": [0, 1], **CHANGED},
    "mlp_bn_dropout_adam": {"dropped_momentum": [0, 1, 2], **CHANGED},
}


@pytest.fixture(scope="module")
def solo_runs(tmp_path_factory, synthetic_data_dir):
    """Each case of ``BUGS``: its jobs' configs and solo runs, run once for the module."""
    runs = {}
    for case in BUGS:
        shared, jobs = CASES[case]
        cfgs = [compose_train(*BASE, f"data.data_dir={synthetic_data_dir}", *shared, *job) for job in jobs]
        folder = tmp_path_factory.mktemp(case)
        runs[case] = cfgs, [solo_run(folder / str(i), cfg) for i, cfg in enumerate(cfgs)]
    return runs


@pytest.mark.slow
@pytest.mark.parametrize("case, bug", [(case, bug) for case, bugs in BUGS.items() for bug in bugs])
def test_the_comparison_fails_on_a_planted_bug(monkeypatch, solo_runs, case, bug):
    """The tolerances that let a pack and its solo run round otherwise still catch a real
    mistake: with each bug planted, every job it changes fails the losses' check and, on its
    own, the weights' check; the jobs it leaves alone pass both."""
    cfgs, solos = solo_runs[case]
    plant(monkeypatch, bug)
    for i, (loss, weights) in enumerate(mismatches(packed_run(cfgs), solos)):
        if i in BUGS[case][bug]:
            assert loss is not None and weights is not None, f"job {i}: {bug} went unnoticed ({loss}, {weights})"
        else:
            assert loss is None and weights is None, f"job {i}: {loss or weights}"


# Mates whose optimizer hyperparameters differ from the job's and from each other: jobs with
# the same values take one optimizer call together (packed_optim), which can round the job's
# update otherwise (1e-7 relative) than a call of its own, dropout or not.
@pytest.mark.slow
@pytest.mark.parametrize(
    "shared, job, mates",
    [
        (
            ["model=mlp", "model.hidden=[32]", "model.batch_norm=true", "optimizer=adam"],
            ["seed=1", "model.dropout=0.3"],
            (
                ["seed=2", "model.dropout=0.5", "optimizer.lr=0.002"],
                ["seed=3", "model.dropout=0.1", "optimizer.lr=0.01", "loss=mse"],
            ),
        ),
        (
            ["model=cnn", "model.channels=[4,8]", "model.fc=[16]", "optimizer=sgd"],
            ["seed=1", "model.conv_dropout=0.25", "model.dropout=0.5"],
            (
                ["seed=2", "model.conv_dropout=0.5", "optimizer.lr=0.02"],
                ["seed=3", "model.dropout=0.2", "optimizer.lr=0.05", "loss=mse"],
            ),
        ),
    ],
    ids=["mlp", "cnn"],
)
def test_a_packed_jobs_numbers_do_not_depend_on_its_pack_mates(synthetic_data_dir, shared, job, mates):
    """The same job, second in two packs with different mates (seed, dropout rates, lr, loss):
    the same loss at every step, to the bit, over two epochs."""
    from mnist_lab.packed.pack import Pack

    def losses_beside(mate: list[str]) -> torch.Tensor:
        settings = [*BASE, "trainer.max_epochs=2", f"data.data_dir={synthetic_data_dir}", *shared]
        pack = Pack([compose_train(*settings, *mate), compose_train(*settings, *job)])
        return pack_losses(pack)

    first, second = (losses_beside(mate) for mate in mates)
    assert not torch.equal(first[:, 0], second[:, 0]), "the mates should differ"
    assert torch.equal(first[:, 1], second[:, 1])
