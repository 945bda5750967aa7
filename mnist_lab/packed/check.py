"""Whether a pack computes each job's own network, proved before the pack trains (which networks
can pack at all is decided before, in packable.py).

``check_pack(pack)`` is the proof, before a pack trains (``packed.pack_run.built_pack``): on the pack's
first batch, a copy of the pack makes one step (forward, per-job losses, backward, optimizer
step) and each job's own network, built as its solo run builds it (its seed, its class and
``forward``, its torch optimizer and scheduler), makes the same step on its own batch. They
must agree (``agree``): the initial weights as the pack's ``copy_into`` gives them back, the
logits, the loss, every gradient, and the weights and batch-norm statistics after the optimizer
step (the solo optimizer stepping the pack's gradients, so that each stage is compared on equal
inputs). Anything else, an error included, is the reason the jobs train one by one. The pack
itself is not touched, and the random-number state is put back (``kept_rng``), so the check
changes no job's numbers.

Tolerance: both sides compute the same float32 sums, possibly in another order (one batched
matmul against M single ones, a grouped convolution, a fused optimizer kernel against a
``foreach`` one). Rounding then moves a result by about sqrt(n) float32 epsilons (2^-23, 1.2e-7)
of the magnitude of its n terms, n at most 784 pixels or the batch size (5,000 in
``softmax_batch``): under 1e-5 of the tensor's scale; ``RTOL`` = 1e-4 of its largest
element leaves ten times that, as ``cuda_graph.CHECK_RTOL`` (the CUDA graph's self-check)
does. A network that computes something else (a scaled output, a skipped or extra layer, other
weights) is off by a large fraction of the scale. On a GPU the check turns TF32 off for its
own computations (both sides in full float32) and compares with dropout off: a pack's GPU
dropout draws its own masks, not the solo run's (docs/packed_sweeps.md).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import lightning as L
import torch
from hydra.utils import instantiate
from torch import nn

from mnist_lab.cli.console import first_line
from mnist_lab.packed.layers import PackedDropout
from mnist_lab.packed.optimizer import PackedOptimizer
from mnist_lab.packed.packable import kept_rng, target_of
from mnist_lab.run.classifier import dropout_seed
from mnist_lab.run.schedules import build_scheduler
from mnist_lab.run.step import eager_optimizer_kwargs

RTOL, ATOL = 1e-4, 1e-6  # of a tensor's largest magnitude; absolute, for tensors of zeros


def agree(ours: torch.Tensor, theirs: torch.Tensor) -> float | None:
    """None if ``ours`` equals ``theirs`` to the tolerance, else the largest difference as a
    share of ``theirs``'s scale (inf for NaNs in other places)."""
    ours, theirs = ours.detach().double().cpu(), theirs.detach().double().cpu()
    if ours.shape != theirs.shape:
        return float("inf")
    nan = theirs.isnan()
    if not torch.equal(ours.isnan(), nan):
        return float("inf")
    ours, theirs = ours[~nan], theirs[~nan]
    if not len(theirs):
        return None
    scale = float(theirs.abs().max())
    worst = float((ours - theirs).abs().max())
    return None if worst <= RTOL * scale + ATOL else worst / max(scale, ATOL)


def check_pack(pack) -> str | None:
    """None if every job's step in ``pack`` is its solo step (module docstring), else the first
    difference or error, as a phrase for a log line naming the job."""
    with kept_rng(), _full_float32(pack.device):
        try:
            return _compare(pack)
        except Exception as error:  # noqa: BLE001 - any failure means: train these jobs one by one
            return f"the pack's check against each job's own model failed ({first_line(error)})"


@contextlib.contextmanager
def _full_float32(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _compare(pack) -> str | None:
    device, cfgs = pack.device, pack.cfgs
    masks = device.type == "cpu"  # a GPU pack's dropout draws its own masks: compared without dropout
    # the pack's copy, with fresh dropout streams (the pack's own are not touched)
    fresh = [torch.Generator(device=g.device) for g in pack.net.generators]
    net = copy.deepcopy(pack.net, memo={id(pack.net.generators): fresh})
    solos = []
    for i, cfg in enumerate(cfgs):
        L.seed_everything(cfg.seed, verbose=False)  # as train.fit_and_test: the net first
        solos.append(instantiate(cfg.model).to(device))
        reason = _stage("initial weights", _from_pack(net, i, solos[i]), solos[i].state_dict())
        if reason:
            return _of_job(i, cfg, reason)
    optimizer = PackedOptimizer(net.parameters(), pack.make_optimizers)
    for name, values in pack.optimizer.hyper.items():  # lr, momentum, ... as the schedules set them
        optimizer.hyper[name].copy_(values)
    net.train()
    _dropout_off(net, masks)
    x, y = next(iter(pack.batches))
    net.seed_dropout([dropout_seed(cfg.seed, pack.epoch) for cfg in cfgs])
    logits = net(x)  # as PackedStep
    losses = pack.loss(logits, y)
    optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    grads = [p.grad.detach().clone() for p in net.parameters()]
    optimizer.step()
    for i, cfg in enumerate(cfgs):
        reason = _compare_job(pack, net, grads, (logits[i], losses[i], x[i], y[i]), i, solos[i], masks)
        if reason:
            return _of_job(i, cfg, reason)
    return None


def _of_job(i: int, cfg, reason: str) -> str:
    return f"job {i} of the pack ({target_of(cfg)}): {reason}"


def _compare_job(pack, net, grads, packed, i: int, solo: nn.Module, masks: bool) -> str | None:
    """Job ``i``'s solo step (as ``step.EagerStep`` makes it) against the pack's: ``packed`` are
    the pack's logits and loss for the job and the job's batch."""
    device, cfg = pack.device, pack.cfgs[i]
    logits, loss, x, y = packed
    make_optimizer = instantiate(cfg.optimizer)
    optimizer = make_optimizer(solo.parameters(), **eager_optimizer_kwargs(make_optimizer, device))
    if cfg.get("scheduler"):  # the scheduler sets the first step's lr (one-cycle: its start)
        build_scheduler(instantiate(cfg.scheduler), optimizer, lambda: pack.total_steps)
    solo.train()
    _dropout_off(solo, masks)
    torch.manual_seed(dropout_seed(cfg.seed, pack.epoch))  # as Classifier.on_train_epoch_start
    solo_logits = solo(x)
    solo_loss = instantiate(cfg.loss).to(device)(solo_logits, y)
    optimizer.zero_grad(set_to_none=True)
    solo_loss.backward()
    for stage, ours, theirs in (("logits", logits, solo_logits), ("loss", loss, solo_loss)):
        if (worst := agree(ours, theirs)) is not None:
            return _differ(stage, worst)
    packed_grads = _grads_from_pack(net, grads, i, solo)
    differs = _stage("gradients", packed_grads, {name: p.grad for name, p in solo.named_parameters()})
    if differs:
        return differs
    with torch.no_grad():  # the solo optimizer steps the pack's gradients: the update compared alone
        for name, p in solo.named_parameters():
            p.grad.copy_(packed_grads[name])
    optimizer.step()
    return _stage("weights after the optimizer step", _from_pack(net, i, solo), solo.state_dict())


def _stage(stage: str, ours: dict, theirs: dict) -> str | None:
    if set(ours) != set(theirs):
        return f"its {stage} have other names ({sorted(set(ours) ^ set(theirs))[0]})"
    for name, value in theirs.items():
        if (worst := agree(ours[name], value)) is not None:
            return _differ(f"{stage} ({name})", worst)
    return None


def _differ(stage: str, worst: float) -> str:
    return f"its {stage} differ from its own model's by up to {worst:.2g} of their scale (tolerance {RTOL:g})"


def _from_pack(net, i: int, solo: nn.Module) -> dict[str, torch.Tensor]:
    """Job ``i``'s state as the pack gives it back (``copy_into``) into a copy of ``solo`` whose
    every value was NaN first: a layer the pack misses stays NaN."""
    blank = copy.deepcopy(solo)
    with torch.no_grad():
        for value in blank.state_dict().values():
            if value.is_floating_point():
                value.fill_(float("nan"))
    return {k: v.clone() for k, v in net.copy_into(i, blank).state_dict().items()}


def _grads_from_pack(net, grads: list[torch.Tensor], i: int, solo: nn.Module) -> dict[str, torch.Tensor]:
    """Job ``i``'s gradients in the solo layout: the pack's gradients put where its weights are,
    given back by ``copy_into`` (the same mapping as the weights)."""
    params = list(net.parameters())
    saved = [p.data for p in params]
    try:
        for p, grad in zip(params, grads, strict=True):
            p.data = grad
        state = _from_pack(net, i, solo)
    finally:
        for p, data in zip(params, saved, strict=True):
            p.data = data
    return {name: state[name] for name, _ in solo.named_parameters()}


def _dropout_off(net: nn.Module, masks: bool) -> None:
    """Where the masks cannot match (a GPU), the check runs its dropout layers as in evaluation."""
    if masks:
        return
    for module in net.modules():
        if isinstance(module, (nn.Dropout, PackedDropout)):
            module.eval()
