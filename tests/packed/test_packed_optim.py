"""The packed optimizer steps each model as torch.optim steps it alone, and each model's learning
rate follows its own torch scheduler."""

from __future__ import annotations

import functools

import pytest
import torch

from mnist_lab.packed.optimizer import PackedOptimizer
from mnist_lab.packed.schedules import JobSchedules

# Per-model hyperparameters, one dict per model; every optimizer option the configs can vary.
HYPERPARAMETERS = {
    torch.optim.SGD: [
        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
        dict(lr=0.05, dampening=0.1),
        dict(lr=0.2, momentum=0.5, dampening=0.1),
    ],
    torch.optim.Adam: [dict(lr=1e-3), dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=1e-2), dict(lr=3e-3, eps=1e-6)],
    torch.optim.AdamW: [dict(lr=1e-3), dict(lr=1e-2, betas=(0.8, 0.99), weight_decay=0.1)],
    torch.optim.RMSprop: [
        dict(lr=1e-3),
        dict(lr=1e-2, momentum=0.9, centered=True, weight_decay=1e-3),
        dict(lr=1e-3, alpha=0.9, centered=True),
    ],
    torch.optim.Adadelta: [dict(lr=1.0), dict(lr=0.5, rho=0.8, weight_decay=1e-2, eps=1e-5)],
}
SHAPES = [(5, 3), (3,), (2, 3, 3, 3)]


CASES = [(cls, False) for cls in HYPERPARAMETERS] + [(torch.optim.Adam, True), (torch.optim.AdamW, True)]


@pytest.mark.parametrize(
    "grouped, switch_at", [(True, None), (False, None), (True, 15)], ids=["cpu_path", "device_path", "cpu_then_device"]
)
@pytest.mark.parametrize("cls, amsgrad", CASES, ids=lambda v: getattr(v, "__name__", f"amsgrad={v}"))
def test_each_model_of_a_pack_steps_as_torch_optim_steps_it_alone(cls, amsgrad, grouped, switch_at):
    """Both roads: torch's functional optimizers per group of equal hyperparameters (the CPU's),
    and the written-out formulas with hyperparameters as tensors (other devices'); and the one
    after the other (a captured step takes the written-out road: it counts steps on the device,
    from where the other left off)."""
    settings = [{**kw, "amsgrad": True} if amsgrad else kw for kw in HYPERPARAMETERS[cls]]
    models = len(settings)
    torch.manual_seed(0)
    packed = [torch.randn(models, *shape, requires_grad=True) for shape in SHAPES]
    solos = [[p[i].detach().clone().requires_grad_() for p in packed] for i in range(models)]
    solo_optimizers = [cls(params, foreach=False, **kw) for params, kw in zip(solos, settings, strict=True)]
    packed_optimizer = PackedOptimizer(packed, [functools.partial(cls, **kw) for kw in settings])
    packed_optimizer.grouped = grouped
    for step in range(30):
        if step == switch_at:
            packed_optimizer.grouped = False
        grads = [torch.randn_like(p) for p in packed]
        for i, optimizer in enumerate(solo_optimizers):
            for param, grad in zip(solos[i], grads, strict=True):
                param.grad = grad[i].clone()
            optimizer.step()
        for param, grad in zip(packed, grads, strict=True):
            param.grad = grad
        packed_optimizer.step()
        for i in range(models):
            for param, solo in zip(packed, solos[i], strict=True):
                torch.testing.assert_close(param[i].detach(), solo.detach(), rtol=1e-6, atol=1e-6)
    for i, optimizer in enumerate(solo_optimizers):  # what a checkpoint holds: torch's own state, per model
        exported = packed_optimizer.job_state_tensors(i)
        step = packed_optimizer.job_step_count()
        states = optimizer.state_dict()["state"]
        for n in range(len(SHAPES)):
            state = states.get(n, {})  # torch keeps nothing for SGD without momentum
            assert set(state) == set(exported) | ({"step"} if step is not None else set()), (i, sorted(state))
            for name, value in state.items():
                ours = step if name == "step" else exported[name][n][i]
                torch.testing.assert_close(ours, value, rtol=1e-6, atol=1e-6)


def test_a_models_lr_can_change_between_steps():
    params = [torch.zeros(2, 3, requires_grad=True)]
    optimizer = PackedOptimizer(params, [functools.partial(torch.optim.SGD, lr=1.0)] * 2)
    optimizer.set("lr", [0.5, 2.0])
    params[0].grad = torch.ones(2, 3)
    optimizer.step()
    assert params[0][:, 0].tolist() == [-0.5, -2.0]


@pytest.mark.parametrize(
    "make_optimizers, reason",
    [
        ([functools.partial(torch.optim.SGD), functools.partial(torch.optim.Adam)], "differ in class"),
        (
            [functools.partial(torch.optim.Adam, amsgrad=True), functools.partial(torch.optim.Adam)],
            "settings other than",
        ),
        ([functools.partial(torch.optim.SGD, maximize=True)], "maximize"),
        ([functools.partial(torch.optim.Adagrad)], "Adagrad has no packed update"),
    ],
)
def test_optimizers_that_cannot_share_a_packed_update_are_refused(make_optimizers, reason):
    with pytest.raises(ValueError, match=reason):
        PackedOptimizer([torch.zeros(len(make_optimizers), 2, requires_grad=True)], make_optimizers)


SCHEDULES = {
    "onecycle": (torch.optim.lr_scheduler.OneCycleLR, [dict(max_lr=0.1), dict(max_lr=0.01, pct_start=0.5)]),
    "step": (torch.optim.lr_scheduler.StepLR, [dict(step_size=1, gamma=0.7), dict(step_size=2, gamma=0.5)]),
    "cosine": (torch.optim.lr_scheduler.CosineAnnealingLR, [dict(T_max=4), dict(T_max=2, eta_min=0.001)]),
}


@pytest.mark.parametrize("name", SCHEDULES)
def test_each_job_gets_the_lr_its_own_scheduler_gives_at_every_step(name):
    cls, settings = SCHEDULES[name]
    steps_per_epoch, epochs = 5, 4
    make_optimizers = [
        functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
        functools.partial(torch.optim.SGD, lr=0.2),
    ]
    make_schedulers = [functools.partial(cls, **kw) for kw in settings]
    per_step = name == "onecycle"
    # What each solo run's optimizer holds at each step, stepping its scheduler as Classifier does.
    expected = []
    for make_optimizer, make_scheduler in zip(make_optimizers, make_schedulers, strict=True):
        optimizer = make_optimizer([torch.zeros(1, requires_grad=True)])
        extra = {"total_steps": steps_per_epoch * epochs} if per_step else {}
        scheduler = make_scheduler(optimizer, **extra)
        lrs = []
        for _ in range(epochs):
            for _ in range(steps_per_epoch):
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                if per_step:
                    scheduler.step()
            if not per_step:
                scheduler.step()
        expected.append(lrs)

    params = [torch.zeros(2, 1, requires_grad=True)]
    optimizer = PackedOptimizer(params, make_optimizers)
    schedules = JobSchedules(make_optimizers, make_schedulers, steps_per_epoch * epochs)
    schedules.apply(optimizer)
    seen = []
    for _ in range(epochs):
        tables = schedules.epoch_tables(steps_per_epoch, torch.device("cpu"))
        for k in range(steps_per_epoch):
            for key, table in tables.items():
                optimizer.set(key, table[k])
            seen.append(optimizer.hyper["lr"].tolist())
        schedules.end_epoch()
        if not schedules.per_step:
            schedules.apply(optimizer)
    assert [list(row) for row in zip(*expected, strict=True)] == seen
    assert len({tuple(row) for row in seen}) > 2, "the schedule should move the lr"
