"""Which step a run takes (``step_factory.make_step``), when its scheduler steps
(``schedules``) and an epoch's history row (``epoch_log.history_row``), without Lightning."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from mnist_lab.models import MLP
from mnist_lab.run import step_factory
from mnist_lab.run.cuda_graph import GraphStep
from mnist_lab.run.epoch_log import HISTORY_KEYS, EpochLog, empty_history, history_row
from mnist_lab.run.schedules import build_scheduler, step_at_epoch_end
from mnist_lab.run.step import EagerStep
from tests import cpu_cuda_graph

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a CUDA device object needs no GPU to name
CE = torch.nn.functional.cross_entropy
ONE_CYCLE = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=0.1)


def make(device=CPU, optimizer=torch.optim.Adam, **settings):
    """``make_step`` on a small net; returns (step, optimizer, what it said)."""
    said = []
    step, built = step_factory.make_step(
        MLP(hidden=[8]), CE, functools.partial(optimizer, lr=0.01), device, say=said.append, **settings
    )
    return step, built, said


def test_a_cpu_run_takes_the_eager_step_with_fused_adam_and_says_nothing(monkeypatch):
    backwards, cuda_queries = [], []
    step, optimizer, said = make(backward=lambda loss: (backwards.append(loss), loss.backward()))
    assert isinstance(step, EagerStep) and said == []
    assert optimizer.defaults["fused"] is True and not optimizer.defaults["capturable"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_queries.append(1) or False)
    step(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
    assert cuda_queries == []  # skip_capture_check: no CUDA query at every step
    assert len(backwards) == 1  # the backward it was given (Lightning's manual_backward)
    assert {id(p) for p in optimizer.param_groups[0]["params"]} == {id(p) for p in step.net.parameters()}


def test_cuda_graph_on_where_no_graph_can_run_is_refused_in_one_sentence():
    with pytest.raises(
        ValueError,
        match=r"^step.cuda_graph=on but the model is not on a CUDA device; "
        r"use step.cuda_graph=auto\.$",
    ):
        make(cuda_graph="on")


@pytest.mark.parametrize(
    "settings, reason",
    [
        ({"world_size": 2}, "training on several devices (gradients are all-reduced outside the graph)"),
        ({"precision": "16-mixed"}, "trainer.precision=16-mixed (the graph step runs in float32)"),
        (
            {"make_scheduler": ONE_CYCLE},
            "the scheduler cycles momentum (cycle_momentum=true), which the captured step reads as a constant",
        ),
    ],
)
def test_on_a_cuda_device_auto_says_why_the_graph_is_off_and_off_says_nothing(settings, reason):
    step, optimizer, said = make(CUDA, cuda_graph="auto", **settings)
    assert isinstance(step, EagerStep) and said == [f"CUDA graph off: {reason}; using the eager step."]
    assert not optimizer.defaults["capturable"] and not optimizer.defaults["fused"]  # not fused off the CPU
    step, _, said = make(CUDA, cuda_graph="off", **settings)
    assert isinstance(step, EagerStep) and said == []


@pytest.fixture
def graph_on_cpu(monkeypatch):
    """The CPU stand-in for the graph, and no objection to the CPU device."""
    cpu_cuda_graph.install(monkeypatch)
    real_reason = step_factory.graph_unsupported_reason

    def reason_ignoring_device(*args):
        reason = real_reason(*args)
        return None if reason == "the model is not on a CUDA device" else reason

    monkeypatch.setattr(step_factory, "graph_unsupported_reason", reason_ignoring_device)


def test_where_a_graph_can_run_it_is_taken_with_a_capturable_optimizer(graph_on_cpu):
    for cuda_graph in ("auto", "on"):
        step, optimizer, said = make(cuda_graph=cuda_graph)
        assert isinstance(step, GraphStep) and optimizer.defaults["capturable"] is True and said == []
        step(torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3]))
        assert step.graph is not None and step.off_reason is None
    step, optimizer, _ = make(optimizer=torch.optim.SGD, cuda_graph="auto")
    assert isinstance(step, GraphStep) and optimizer.defaults["fused"] is True  # SGD: the fused step
    assert isinstance(make(cuda_graph="off")[0], EagerStep)


def test_a_graph_that_fails_its_check_says_so_under_auto_and_stops_the_run_under_on(graph_on_cpu, monkeypatch):
    monkeypatch.setattr(torch.cuda, "CUDAGraph", cpu_cuda_graph.HalfReplayedGraph)
    batch = torch.randn(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    step, _, said = make(cuda_graph="auto")
    step(*batch)
    assert len(said) == 1 and said[0].startswith("CUDA graph off: the captured step disagrees with the eager step")
    step, _, said = make(cuda_graph="on")
    with pytest.raises(ValueError, match=r"^step.cuda_graph=on but the captured step disagrees"):
        step(*batch)


def optimizer_for_schedules():
    return torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)


def test_one_cycle_is_built_for_the_run_s_steps_and_others_never_ask_for_them():
    asked = []

    def total_steps():
        asked.append(1)
        return 40

    one_cycle = build_scheduler(ONE_CYCLE, optimizer_for_schedules(), total_steps)
    assert one_cycle.total_steps == 40 and asked == [1]
    step_lr = functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5)
    assert isinstance(build_scheduler(step_lr, optimizer_for_schedules(), total_steps), torch.optim.lr_scheduler.StepLR)
    assert asked == [1]


def test_at_epoch_end_per_epoch_schedulers_step_plateau_on_val_acc_and_one_cycle_waits():
    optimizer = optimizer_for_schedules()
    step_lr = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    optimizer.step()
    step_at_epoch_end(step_lr, val_acc=0.9)
    assert optimizer.param_groups[0]["lr"] == 0.5
    optimizer = optimizer_for_schedules()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=0, factor=0.1)
    for val_acc in (0.5, 0.6, 0.6):  # the third epoch does not improve: lr drops
        step_at_epoch_end(plateau, val_acc)
    assert plateau.best == 0.6 and optimizer.param_groups[0]["lr"] == pytest.approx(0.1)
    optimizer = optimizer_for_schedules()
    one_cycle = ONE_CYCLE(optimizer, total_steps=10)
    lr = optimizer.param_groups[0]["lr"]
    step_at_epoch_end(one_cycle, val_acc=0.9)  # it steps after every optimizer step instead
    assert optimizer.param_groups[0]["lr"] == lr and one_cycle.last_epoch == 0
    step_at_epoch_end(None, val_acc=0.9)


def test_an_epoch_becomes_one_history_row():
    log = EpochLog(4, CPU)
    for loss, correct in ((1.0, 3), (2.0, 1), (4.5, 2)):
        log.record(torch.tensor(loss), torch.tensor(correct), 4)
    time_s = log.stop_clock()
    row = history_row(log, {"val/loss": torch.tensor(0.25), "val/acc": torch.tensor(0.75)}, lr=0.01)
    assert tuple(row) == HISTORY_KEYS == tuple(empty_history())
    assert row == {
        "train_loss": 2.5,
        "train_acc": 0.5,
        "val_loss": 0.25,
        "val_acc": 0.75,
        "lr": 0.01,
        "epoch_time_s": time_s,
    }
    other_process = torch.tensor([4.5, 6.0, 8.0, 1.0])  # its loss sum, correct, images, steps
    both = history_row(log, {}, lr=0.01, total=lambda totals: totals + other_process)  # as DDP sums them
    assert both["train_loss"] == 3.0 and both["train_acc"] == 0.6
    empty = history_row(EpochLog(4, CPU), {}, lr=0.01)  # no step taken, no validation run
    assert math.isnan(empty["train_loss"]) and empty["train_acc"] == 0.0
    assert math.isnan(empty["val_loss"]) and math.isnan(empty["val_acc"])
