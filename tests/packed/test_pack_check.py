"""A pack is verified, not assumed (``pack_check``): a network packs by what it is, and every pack
proves each job's step equal to its solo step before it trains; anything else trains alone, saying
why, with the numbers of ``hydra/launcher=basic``."""

from __future__ import annotations

import os
import textwrap

import pytest
import torch
from torch import nn

from mnist_lab import models
from mnist_lab.packed.check import check_pack
from mnist_lab.packed.groups import split_into_packs, why_solo
from mnist_lab.packed.pack import Pack
from mnist_lab.packed.packable import packed_form_reason
from tests.conftest import QUICK, ROOT, compose_train, pack_losses, read_metrics, run_cli
from tests.packed.test_packed_launcher import assert_same_record


class Stack(nn.Sequential):  # a user's plain stack, any name: it packs
    def __init__(self):
        super().__init__(nn.Flatten(), nn.Linear(784, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 10))


class Skip(models.MLP):  # a user's MLP with its own forward: it does not
    def forward(self, x):
        return super().forward(x) + 1


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.mark.parametrize(
    "net, reason",
    [
        (models.MLP(), None),
        (models.MLP(hidden=[], activation="gelu"), None),
        (models.MLP(hidden=[32, 16], dropout=0.3, batch_norm=True), None),
        (models.CNN(), None),
        (Stack(), None),
        (Skip(), "Skip defines forward"),
        (Residual(), "Residual is not an nn.Sequential"),
        (nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(2704, 10)), "BatchNorm2d"),
        (nn.Sequential(nn.Flatten(), nn.Linear(784, 10, bias=False)), "bias=False"),
        (nn.Sequential(nn.Linear(784, 10)), "first layer"),
        (nn.Sequential(nn.Flatten(), nn.MaxPool2d(2), nn.Linear(392, 10)), "MaxPool2d layer 1 after the flatten"),
    ],
)
def test_a_network_packs_by_what_it_is(net, reason):
    found = packed_form_reason(net)
    assert found is None if reason is None else reason in found


def test_a_hook_or_an_overriding_method_keeps_a_network_alone():
    net = models.MLP()
    net[1].register_forward_hook(lambda module, args, out: out * 2)
    assert "hook on its layer 1" in packed_form_reason(net)

    class Called(models.MLP):
        def __call__(self, x):
            return super().__call__(x) * 2

    assert "Called defines __call__" in packed_form_reason(Called())


@pytest.fixture(scope="module")
def job(synthetic_data_dir):
    def compose(*overrides: str):
        return compose_train(*QUICK, f"data.data_dir={synthetic_data_dir}", "trainer.max_epochs=1", *overrides)

    return compose


PACKS = {
    "mlp, batch norm, dropout, Adam": ["model.batch_norm=true", "model.dropout=0.3"],
    "small cnn, dropout, SGD, one-cycle": [
        *("model=cnn_small", "model.channels=[4]", "model.fc=[16]", "model.conv_dropout=0.2", "model.dropout=0.3"),
        *("optimizer=sgd", "optimizer.momentum=0.9", "scheduler=onecycle"),
    ],
    "softmax, SGD with momentum, mse": ["model=linear", "optimizer=sgd", "optimizer.momentum=0.9", "loss=mse"],
}


@pytest.mark.slow
@pytest.mark.parametrize("overrides", PACKS.values(), ids=PACKS.keys())
def test_a_pack_of_shipped_models_proves_itself_and_the_check_changes_nothing(job, overrides):
    cfgs = [job(*overrides, f"seed={s}", f"optimizer.lr={0.01 * (s + 1)}") for s in range(3)]
    plain = Pack(cfgs)
    losses = pack_losses(plain)
    checked = Pack(cfgs)
    rng = torch.get_rng_state()
    assert check_pack(checked) is None
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(pack_losses(checked), losses)  # bit for bit
    for i in range(len(cfgs)):
        ours, theirs = plain.solo_net(i).state_dict(), checked.solo_net(i).state_dict()
        for a, b in zip(ours.values(), theirs.values(), strict=True):
            assert torch.equal(a, b)


def test_the_check_catches_what_the_structure_cannot_see(job, monkeypatch):
    """Every layer of the MLP is known, but nn.Linear itself computes something else here: the
    pack (which has its own linear layers) disagrees with the job's own model, and says so."""
    cfgs = [job("seed=0"), job("seed=1")]
    assert why_solo(cfgs[0]) is None
    monkeypatch.setattr(nn.Linear, "forward", lambda self, x: nn.functional.linear(x, self.weight, self.bias) * 1.01)
    reason = check_pack(Pack(cfgs))
    assert reason.startswith("job 0 of the pack (mnist_lab.models.MLP): its logits differ from its own model's")


def test_a_user_subclass_with_its_own_forward_trains_alone_saying_why(job, monkeypatch):
    monkeypatch.setattr(models.MLP, "forward", Skip.forward)  # as if edited in models.py
    cfgs = [job("seed=0"), job("seed=1")]
    reasons = {}
    assert split_into_packs(cfgs, 8, reasons=reasons) == [[0], [1]]
    assert reasons == {i: "model has no packed form (mnist_lab.models.MLP: MLP defines forward)" for i in (0, 1)}


MY_NETS = '''
from torch import nn


class Tiny(nn.Sequential):
    """A user's plain stack of layers: packs, whatever its name."""

    def __init__(self, hidden: int = 32, dropout: float = 0.0):
        super().__init__(nn.Flatten(), nn.Linear(784, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10))
'''


@pytest.mark.slow
def test_a_users_sequential_packs_and_gives_the_basic_launchers_numbers(tmp_path, synthetic_data_dir):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent(MY_NETS))
    (tmp_path / "my_conf" / "model").mkdir(parents=True)
    (tmp_path / "my_conf" / "model" / "tiny.yaml").write_text("_target_: my_nets.Tiny\nhidden: 32\ndropout: 0.2\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    common = [*QUICK, "trainer.max_epochs=1", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]", "model=tiny"]
    grid = ["seed=0,1", "optimizer.lr=0.001"]
    dirs = {}
    for launcher in ("basic", "packed"):
        dirs[launcher] = tmp_path / launcher
        args = ["-m", *common, *grid, f"hydra/launcher={launcher}", f"hydra.sweep.dir={dirs[launcher]}"]
        result = run_cli("mnist_lab.train", *args, cwd=tmp_path, data_dir=synthetic_data_dir, env=env)
    assert "Launching 2 jobs locally: 2 in 1 packs, 0 alone" in result.stdout + result.stderr
    for job_dir in sorted(p.name for p in dirs["basic"].iterdir() if p.is_dir()):
        packed = read_metrics(dirs["packed"] / job_dir)
        assert packed["packed"] == 2
        assert_same_record(packed, read_metrics(dirs["basic"] / job_dir), job_dir)
