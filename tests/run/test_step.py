"""The training step and the epoch's bookkeeping as units, built without Lightning:
``step(x, y) -> (loss, correct)`` (eager, and the CUDA graph on the CPU stand-in of
tests/cpu_cuda_graph.py), the graph's self-check, ``EpochLog`` and the divergence check."""

from __future__ import annotations

import copy

import pytest
import torch

from mnist_lab.models import MLP
from mnist_lab.run.cuda_graph import GraphStep, graph_optimizer_kwargs
from mnist_lab.run.epoch_log import EpochLog, first_bad_steps
from mnist_lab.run.step import EagerStep
from tests import cpu_cuda_graph

CPU = torch.device("cpu")


def batches(n: int, size: int = 16, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 1, 28, 28, generator=generator), torch.randint(0, 10, (size,), generator=generator))
        for _ in range(n)
    ]


def net_and_optimizer(optimizer=torch.optim.Adam, graph: bool = False, **kwargs):
    torch.manual_seed(0)
    net = MLP(hidden=[32], batch_norm=True)
    extra = graph_optimizer_kwargs(optimizer) if graph else {}
    return net, optimizer(net.parameters(), **kwargs, **extra)


def test_the_eager_step_is_a_plain_training_step_and_takes_the_given_backward():
    net, optimizer = net_and_optimizer(lr=0.01)
    reference = copy.deepcopy(net)
    reference_optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    backwards = []

    def backward(loss):
        backwards.append(loss)
        loss.backward()

    step = EagerStep(net, torch.nn.functional.cross_entropy, optimizer, backward=backward)
    for x, y in batches(3):
        loss, correct = step(x, y)
        logits = reference(x)
        expected = torch.nn.functional.cross_entropy(logits, y)
        reference_optimizer.zero_grad()
        expected.backward()
        reference_optimizer.step()
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert correct.item() == (logits.argmax(1) == y).sum().item()
    assert len(backwards) == 3
    for p, q in zip(net.parameters(), reference.parameters(), strict=True):
        assert torch.allclose(p, q, atol=1e-6)


@pytest.fixture
def cpu_graph(monkeypatch):
    cpu_cuda_graph.install(monkeypatch)


@pytest.mark.parametrize(
    "optimizer, kwargs", [(torch.optim.Adam, {"lr": 0.01}), (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9})]
)
def test_the_graph_step_replays_what_the_eager_step_does(cpu_graph, optimizer, kwargs):
    """Built from net, loss, optimizer and device: the same losses and weights as the eager
    step over full batches and a ragged last one, and the self-check lets the graph through."""
    net, graph_optimizer = net_and_optimizer(optimizer, graph=True, **kwargs)
    eager_net = copy.deepcopy(net)
    eager_optimizer = optimizer(eager_net.parameters(), **kwargs, **graph_optimizer_kwargs(optimizer))
    eager = EagerStep(eager_net, torch.nn.functional.cross_entropy, eager_optimizer)
    reasons = []
    step = GraphStep(net, torch.nn.functional.cross_entropy, graph_optimizer, CPU, fallback=reasons.append)
    for x, y in [*batches(4), (torch.randn(5, 1, 28, 28), torch.randint(0, 10, (5,))), *batches(2, seed=1)]:
        loss, correct = step(x, y)
        expected_loss, expected_correct = eager(x, y)
        assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-5)
        assert correct.item() == expected_correct.item()
    assert reasons == [] and step.graph is not None and step.batch_size == 16
    for p, q in zip(net.parameters(), eager_net.parameters(), strict=True):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


def test_a_graph_that_disagrees_with_the_eager_step_is_dropped_and_the_state_put_back(cpu_graph, monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", cpu_cuda_graph.HalfReplayedGraph)
    net, graph_optimizer = net_and_optimizer(graph=True, lr=0.01)
    eager_net = copy.deepcopy(net)
    eager_optimizer = torch.optim.Adam(eager_net.parameters(), lr=0.01, **graph_optimizer_kwargs(torch.optim.Adam))
    eager = EagerStep(eager_net, torch.nn.functional.cross_entropy, eager_optimizer)
    reasons = []
    step = GraphStep(net, torch.nn.functional.cross_entropy, graph_optimizer, CPU, fallback=reasons.append)
    for x, y in batches(3):
        assert step(x, y)[0].item() == pytest.approx(eager(x, y)[0].item(), rel=1e-5)
    assert len(reasons) == 1 and reasons[0].startswith("the captured step disagrees with the eager step (loss ")
    assert "tolerance rtol=0.0001, atol=1e-06" in reasons[0]
    assert step.graph is None and step.off_reason == reasons[0]
    for p, q in zip(net.parameters(), eager_net.parameters(), strict=True):  # as if never captured
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)


def test_a_fallback_that_raises_stops_the_step(cpu_graph, monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", cpu_cuda_graph.HalfReplayedGraph)
    net, graph_optimizer = net_and_optimizer(graph=True, lr=0.01)

    def refuse(reason):
        raise ValueError(reason)

    step = GraphStep(net, torch.nn.functional.cross_entropy, graph_optimizer, CPU, fallback=refuse)
    with pytest.raises(ValueError, match="the captured step disagrees"):
        step(*batches(1)[0])


def test_the_epoch_log_checks_every_check_every_steps_and_numbers_steps_run_wide():
    log = EpochLog(10, CPU, first_step=100, check_every=3, divergence_threshold=50.0)
    found = [log.record(torch.tensor(v), torch.tensor(2), 4) for v in (1.0, 2.0, 3.0, 4.0, float("nan"), 60.0)]
    assert found == [None, None, None, None, None, 105]  # seen at the check after step 6, not at step 5
    assert log.loss_at(105) != log.loss_at(105)  # NaN: the first bad loss
    assert log.check() is None  # nothing new since the last check
    assert log.record(torch.tensor(1.0), torch.tensor(1), 4) is None
    assert log.check() is None  # only the steps since the last check
    assert log.losses.tolist()[:4] == [1.0, 2.0, 3.0, 4.0] and log.steps == 7
    assert int(log.correct) == 13 and log.seen == 28
    first = log.stop_clock()
    assert first >= 0 and log.stop_clock() == first


def test_the_divergence_check_finds_each_columns_first_bad_step_among_the_watched_ones():
    """The one check, for a solo run's column and a pack's jobs: NaN, inf or above the column's
    threshold; a column left out (a pack's frozen job) is never reported."""
    nan, inf = float("nan"), float("inf")
    losses = torch.tensor([[1.0, 2.0, nan, 1.0], [60.0, 2.0, 1.0, inf], [1.0, nan, nan, 1.0]])
    threshold = torch.tensor([50.0, 1e4, 1e4, 1e4])
    assert first_bad_steps(losses, threshold) == [1, 2, 0, 1]
    assert first_bad_steps(losses, 100.0) == [None, 2, 0, 1]
    assert first_bad_steps(losses, threshold, watched=torch.tensor([True, False, True, False])) == [1, None, 0, None]
    assert first_bad_steps(losses[:, :2], 1e4, watched=torch.tensor([True, False])) == [None, None]
    assert first_bad_steps(losses[:0], 1e4) == [None] * 4
