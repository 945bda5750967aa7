"""How close two float32 trainings of one job must be when they compute the same steps with
other kernels: a pack and its solo run (a batched matrix product for one per job, one optimizer
call for several jobs), a pack of three and a pack of two, or one code path on another CPU
(other vector widths and blocking round the sums of a matrix product otherwise).

Where the tolerance comes from: each step may round each sum and each weight differently, by a
few units of float32's epsilon (``EPS``, 1.19e-7) relative. At the learning rates the tests use,
training does not amplify such differences, so after ``t`` steps they add up to at most about
``t`` of them: job i's loss at step t may differ by ``t * EPS`` times the scale of its loss (its
largest value over the run), and a weight tensor by ``steps * EPS`` of its norm. Measured
(tests/packed/test_pack_matches_solo.py's cases ``linear_sgd_step`` and ``mlp_bn_dropout_adam``,
2026-12-07, branch issue26 off e2720c3, AMD EPYC with torch's AVX-512 kernels and again with
``ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 DNNL_MAX_CPU_ISA=AVX2``, the kernels
of the AVX2 CPU on which CI failed): packed against solo, the largest loss difference was 0.86
of ``t * EPS * scale`` (at step 1: one unit in the last place of the first loss), the largest
weight difference 0.71 of ``steps * EPS * norm`` (Adam, whose step is about lr whatever the
gradient's size, turns a last-bit difference of a near-zero gradient into a difference of
order lr in that entry; a norm over the tensor weighs a few such entries as what they are).
``SAFETY`` = 16 leaves a margin of 18 and 23 over those. A planted 1 % error in the learning rate
moved the same measures by 3,000 to 18,000 (losses) and 30 to 32,000 (weights): a real mistake
fails (tests/packed/test_pack_matches_solo.py ``test_the_comparison_fails_on_a_planted_bug``).

An absolute tolerance per step, not a relative one: a loss near zero (a job that has learned
its training batches) carries the rounding of the larger numbers it was computed from, so its
relative difference can be large (5.6e-5 at a loss of 3e-5 on the AVX2 CPU) while its absolute
difference is a few units in the last place of the loss's scale.
"""

from __future__ import annotations

import torch

EPS = torch.finfo(torch.float32).eps
SAFETY = 16


def loss_tolerance(reference: torch.Tensor, first_step: int = 1) -> torch.Tensor:
    """The largest difference allowed at each step of ``reference`` (per-step losses; its first
    entry is step ``first_step`` of the run)."""
    reference = reference.double()
    steps = torch.arange(first_step, first_step + len(reference), dtype=torch.float64)
    return SAFETY * EPS * steps * reference.abs().max()


def loss_mismatch(ours: torch.Tensor, reference: torch.Tensor, first_step: int = 1) -> str | None:
    """None if ``ours`` (per-step losses) is within ``loss_tolerance`` of ``reference`` at every
    step, else what differs."""
    if ours.shape != reference.shape:
        return f"{len(ours)} steps against {len(reference)}"
    difference = (ours.double() - reference.double()).abs()
    over = difference / loss_tolerance(reference, first_step)
    if bool(over.isnan().any()) or bool((over > 1).any()):
        step = int(over.nan_to_num(float("inf")).argmax())
        return (
            f"the losses differ by {float(difference[step]):.3g} at step {first_step + step} "
            f"({float(ours[step]):.7g} against {float(reference[step]):.7g}), "
            f"{float(over[step]):.3g} times the {SAFETY} * t * EPS * scale allowed"
        )
    return None


def assert_losses_close(ours: torch.Tensor, reference: torch.Tensor, first_step: int = 1, what: str = "") -> None:
    mismatch = loss_mismatch(ours, reference, first_step)
    assert mismatch is None, f"{what}: {mismatch}" if what else mismatch


def weights_mismatch(ours: dict, reference: dict, steps: int, skip: set[str] = frozenset()) -> str | None:
    """None if every floating-point tensor of ``ours`` is within ``SAFETY * steps * EPS`` of its
    ``reference`` in norm (relative to the reference's norm), after ``steps`` steps; integer
    tensors (batch norm's counter) must be equal. ``skip``: entries that hold rounding noise."""
    if ours.keys() != reference.keys():
        return f"other entries: {sorted(ours.keys() ^ reference.keys())}"
    allowed = SAFETY * steps * EPS
    for name, value in ours.items():
        if name in skip:
            continue
        theirs = reference[name]
        if not value.is_floating_point():
            if not torch.equal(value, theirs):
                return f"{name} differs: {value.tolist()} against {theirs.tolist()}"
            continue
        norm = float(theirs.double().norm())
        difference = float((value.double() - theirs.double()).norm())
        if not difference <= allowed * max(norm, EPS):
            return f"{name} differs by {difference / max(norm, EPS):.3g} of its norm, {allowed:.3g} allowed"
    return None
