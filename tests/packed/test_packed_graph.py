"""A pack's training step captured as a CUDA graph (``packed_graph``), on the CPU stand-in of
tests/cpu_cuda_graph.py: the captured pack makes its eager step's losses and weights, step for
step (the same ops on the same numbers), through per-step schedules, dropout streams, batch norm,
a ragged last batch, a frozen diverged job and every packed optimizer; and where the capture
fails, the pack goes on eagerly from where it was."""

from __future__ import annotations

import pytest
import torch

from tests import cpu_cuda_graph
from tests.conftest import QUICK, compose_train, pack_losses

# 2,500 training images at batch 64: 39 full batches and a ragged one (eager) an epoch.
BASE = [*QUICK, "trainer.max_epochs=2", "data.batch_size=64"]

CASES = {
    "sgd_nesterov_dampening_step": (
        ["model=mlp", "model.hidden=[32]", "optimizer=sgd", "scheduler=step", "scheduler.step_size=1"],
        [
            ["seed=1", "optimizer.lr=0.05", "optimizer.momentum=0.9", "optimizer.nesterov=true"],
            ["seed=2", "optimizer.lr=0.1", "optimizer.momentum=0.5", "optimizer.dampening=0.3", "loss=mse"],
            ["seed=3", "optimizer.lr=0.02", "optimizer.weight_decay=0.001", "loss=l1"],
        ],
    ),
    "adam_bn_dropout": (
        ["model=mlp", "model.hidden=[32,16]", "model.batch_norm=true", "optimizer=adam", "optimizer.amsgrad=true"],
        [
            ["seed=4", "model.dropout=0.2", "optimizer.lr=0.001"],
            ["seed=5", "model.dropout=0.5", "optimizer.lr=0.003", "optimizer.betas=[0.8,0.99]", "loss=mse"],
            ["seed=6", "model.dropout=0", "optimizer.lr=0.002"],
        ],
    ),
    # one-cycle with cycle_momentum moves lr and beta1 (SGD: momentum) every step: the graph
    # reads them from the optimizer's tensors
    "adamw_onecycle_betas": (
        ["model=mlp", "model.hidden=[32]", "optimizer=adamw", "scheduler=onecycle", "scheduler.cycle_momentum=true"],
        [
            ["seed=7", "optimizer.lr=0.003", "optimizer.weight_decay=0.05"],
            ["seed=8", "optimizer.lr=0.01", "scheduler.pct_start=0.5"],
        ],
    ),
    "sgd_onecycle_momentum": (
        [
            "model=linear",
            "optimizer=sgd",
            "optimizer.momentum=0.9",
            "scheduler=onecycle",
            "scheduler.cycle_momentum=true",
        ],
        [["seed=16", "optimizer.lr=0.05"], ["seed=17", "optimizer.lr=0.02", "+scheduler.max_momentum=0.8"]],
    ),
    "rmsprop_centered": (
        ["model=mlp", "model.hidden=[32]", "optimizer=rmsprop"],
        [
            ["seed=9", "optimizer.lr=0.001"],
            ["seed=10", "optimizer.lr=0.0003", "optimizer.momentum=0.9", "optimizer.centered=true"],
        ],
    ),
    "cnn_adadelta_dropout": (
        ["model=cnn", "model.channels=[4,8]", "model.fc=[16]", "optimizer=adadelta", "trainer.max_epochs=1"],
        [
            ["seed=11", "model.conv_dropout=0.25", "model.dropout=0.5", "optimizer.lr=0.5"],
            ["seed=12", "model.conv_dropout=0", "model.dropout=0.2", "optimizer.rho=0.8"],
        ],
    ),
    # job 2 diverges at its second step: frozen (lr 0, weights put back) while the graph replays
    "adam_one_diverges": (
        ["model=mlp", "model.hidden=[32]", "optimizer=adam", "step.check_every=10"],
        [["seed=13", "optimizer.lr=0.0001"], ["seed=14", "optimizer.lr=1e6"], ["seed=15", "optimizer.lr=0.0002"]],
    ),
}


@pytest.fixture
def graphs_on_the_cpu(monkeypatch):
    """Packs capture their step on the CPU, into the stand-in graph."""
    from mnist_lab.packed import graph as packed_graph

    cpu_cuda_graph.install(monkeypatch)
    monkeypatch.setattr(packed_graph, "packed_graph_unsupported_reason", lambda device: None)


def packs(data_dir, shared, jobs, said: list[str]):
    """The same jobs as a pack with the captured step and as one with the eager step, both
    stepping the optimizer's written-out update (the one a graph captures)."""
    from mnist_lab.packed import graph as packed_graph
    from mnist_lab.packed.pack import Pack

    base = [*BASE, f"data.data_dir={data_dir}", *shared]
    graph = Pack([compose_train(*base, *job) for job in jobs])
    graph.step.fallback = said.append
    eager = Pack([compose_train(*base, *job, "step.cuda_graph=off") for job in jobs])
    eager.optimizer.grouped = False
    assert isinstance(graph.step, packed_graph.PackedGraphStep) and type(eager.step) is packed_graph.PackedStep
    return graph, eager


@pytest.mark.parametrize("case", CASES)
def test_a_captured_pack_trains_as_its_eager_step(graphs_on_the_cpu, synthetic_data_dir, case):
    shared, jobs = CASES[case]
    said: list[str] = []
    graph, eager = packs(synthetic_data_dir, shared, jobs, said)
    replays = []
    replay = graph.step._replay
    graph.step._replay = lambda x, y: replays.append(1) or replay(x, y)
    graph_losses, eager_losses = pack_losses(graph), pack_losses(eager)
    assert said == [] and graph.step.graph is not None, said
    assert len(replays) == graph.total_steps - graph.epochs, "every full batch (the ragged last ones eagerly)"
    assert graph.optimizer.steps == eager.optimizer.steps == graph.total_steps
    assert graph.diverged_at == eager.diverged_at
    torch.testing.assert_close(graph_losses, eager_losses, rtol=0, atol=0, equal_nan=True)
    weights = eager.net.state_dict()
    for name, tensor in graph.net.state_dict().items():
        torch.testing.assert_close(tensor, weights[name], rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")
    learning = [i for i in range(len(jobs)) if graph.diverged_at[i] is None]
    assert (graph_losses[-1, learning] < graph_losses[0, learning]).all(), "equal curves prove little if nothing learns"


def test_a_pack_whose_capture_fails_goes_on_eagerly(graphs_on_the_cpu, synthetic_data_dir, monkeypatch):
    """Dropout streams not registered with the graph: the capture fails (rule 4 of the stand-in),
    the reason is said once, and the pack trains as the eager one does from its first step."""
    from mnist_lab.packed import graph as packed_graph

    monkeypatch.setattr(packed_graph.PackedGraphStep, "_generators", lambda self: [])
    shared, jobs = CASES["adam_bn_dropout"]
    said: list[str] = []
    graph, eager = packs(synthetic_data_dir, shared, jobs, said)
    torch.testing.assert_close(pack_losses(graph), pack_losses(eager), rtol=0, atol=0)
    assert graph.step.graph is None and len(said) == 1
    assert said[0].startswith("capturing the training step failed (") and "not registered with the graph" in said[0]


def test_the_pack_step_is_captured_only_where_it_can_be(synthetic_data_dir):
    from mnist_lab.packed.graph import PackedStep, make_packed_step
    from mnist_lab.packed.pack import Pack

    pack = Pack([compose_train(*BASE, f"data.data_dir={synthetic_data_dir}", f"seed={s}") for s in (1, 2)])
    said: list[str] = []
    parts = (pack.net, pack.loss, pack.optimizer, torch.device("cpu"))
    assert type(pack.step) is PackedStep
    assert type(make_packed_step(*parts, "auto", say=said.append)) is PackedStep and said == []
    assert type(make_packed_step(*parts, "off", say=said.append)) is PackedStep and said == []
    with pytest.raises(ValueError, match=r"^step.cuda_graph=on but the pack is not on a CUDA device; use"):
        make_packed_step(*parts, "on", say=said.append)
