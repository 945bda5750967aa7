"""The packed optimizer's step written out: each model's update with torch's own formulas.

The path of ``PackedOptimizer.step`` on devices other than the CPU, where grouping the models by
their hyperparameters' values (the CPU path) would read the values back every step. Each
hyperparameter is a tensor ``[M]`` broadcast over the model dimension, and the update is the
formula of torch's own single-tensor implementation (``torch/optim/{sgd,adam,rmsprop,adadelta}.py``,
non-capturable branch), operation by operation: ``tests/packed/test_packed_optim.py`` checks it against
torch.optim, step by step. Hyperparameters are kept in float64 and cast to the parameters' dtype
where torch would use a Python number (a double), so each model computes what its solo optimizer
computes.
"""

from __future__ import annotations

import functools

import torch


def coefficients(
    cls: type, hyper: dict[str, torch.Tensor], steps: torch.Tensor, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """Every per-model number this step uses, computed in float64 as torch computes them in
    Python, then cast once to the parameters' dtype, as torch's kernels cast a Python number.
    ``steps``: the steps made, this one included (a float64 tensor on the device)."""
    h = hyper
    c = {"lr": h["lr"], "weight_decay": h["weight_decay"]}
    if cls is torch.optim.SGD:
        # first: torch's first momentum buffer is the gradient itself (a tensor, not a branch,
        # so that a captured step takes it only at the first step)
        c.update(momentum=h["momentum"], dampened=1 - h["dampening"], nesterov=h["nesterov"], first=steps == 1)
    elif cls in (torch.optim.Adam, torch.optim.AdamW):
        c.update(
            decay=1 - h["lr"] * h["weight_decay"],
            one_minus_beta1=1 - h["beta1"],
            beta2=h["beta2"],
            one_minus_beta2=1 - h["beta2"],
            eps=h["eps"],
            bias_correction2_sqrt=(1 - h["beta2"] ** steps) ** 0.5,
            step_size=h["lr"] / (1 - h["beta1"] ** steps),
        )
    elif cls is torch.optim.RMSprop:
        c.update(
            alpha=h["alpha"],
            one_minus_alpha=1 - h["alpha"],
            eps=h["eps"],
            momentum=h["momentum"],
            centered=h["centered"],
        )
    else:
        c.update(rho=h["rho"], one_minus_rho=1 - h["rho"], eps=h["eps"])
    return {name: value if value.dtype == torch.bool else value.to(dtype) for name, value in c.items()}


@torch.no_grad()
def written_out_step(optimizer) -> None:
    """One step of a ``PackedOptimizer`` (its ``steps`` counting this one), parameter by
    parameter, on its state."""
    update = {
        torch.optim.SGD: _sgd,
        torch.optim.Adam: functools.partial(_adam, amsgrad=optimizer.amsgrad, decoupled=optimizer.decoupled),
        torch.optim.AdamW: functools.partial(_adam, amsgrad=optimizer.amsgrad, decoupled=optimizer.decoupled),
        torch.optim.RMSprop: _rmsprop,
        torch.optim.Adadelta: _adadelta,
    }[optimizer.cls]
    c = coefficients(optimizer.cls, optimizer.hyper, optimizer.step_count, optimizer.params[0].dtype)
    for param, state in zip(optimizer.params, optimizer.state, strict=True):
        if param.grad is not None:
            shape = (-1, *[1] * (param.dim() - 1))  # [M] broadcast over each model's tensor
            update(param, param.grad, state, {k: v.view(shape) for k, v in c.items()})


def _weight_decayed(param: torch.Tensor, grad: torch.Tensor, c: dict) -> torch.Tensor:
    # grad.add(param, alpha=weight_decay); torch skips it when weight_decay == 0, and adding
    # 0 * param changes nothing for a finite param.
    return grad + param * c["weight_decay"]


def _sgd(param, grad, state, c) -> None:
    grad = _weight_decayed(param, grad, c)
    if "momentum_buffer" not in state:
        state["momentum_buffer"] = torch.zeros_like(param)
    buf = state["momentum_buffer"]
    buf.copy_(torch.where(c["first"], grad, buf * c["momentum"] + grad * c["dampened"]))
    with_momentum = torch.where(c["nesterov"].bool(), grad + buf * c["momentum"], buf)
    grad = torch.where(c["momentum"] != 0, with_momentum, grad)  # momentum 0: plain gradient step
    param.sub_(grad * c["lr"])


def _adam(param, grad, state, c, amsgrad: bool, decoupled: bool) -> None:
    if not state:
        state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(param), torch.zeros_like(param)
        if amsgrad:
            state["max_exp_avg_sq"] = torch.zeros_like(param)
    if decoupled:
        param.mul_(c["decay"])
    else:
        grad = _weight_decayed(param, grad, c)
    exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
    exp_avg.lerp_(grad, c["one_minus_beta1"])
    exp_avg_sq.mul_(c["beta2"]).addcmul_(grad * c["one_minus_beta2"], grad)
    if amsgrad:
        torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
        exp_avg_sq = state["max_exp_avg_sq"]
    denom = (exp_avg_sq.sqrt() / c["bias_correction2_sqrt"]).add_(c["eps"])
    param.sub_(exp_avg / denom * c["step_size"])


def _rmsprop(param, grad, state, c) -> None:
    if not state:
        state["square_avg"], state["grad_avg"] = torch.zeros_like(param), torch.zeros_like(param)
        state["momentum_buffer"] = torch.zeros_like(param)
    grad = _weight_decayed(param, grad, c)
    square_avg = state["square_avg"].mul_(c["alpha"]).addcmul_(grad * c["one_minus_alpha"], grad)
    grad_avg = state["grad_avg"].lerp_(grad, c["one_minus_alpha"])
    centered = torch.where(c["centered"].bool(), square_avg.addcmul(grad_avg, grad_avg, value=-1), square_avg)
    avg = centered.sqrt_().add_(c["eps"])
    # momentum 0: torch steps by grad / avg; 0 * buffer + grad / avg is exactly that
    buf = state["momentum_buffer"].mul_(c["momentum"]).addcdiv_(grad, avg)
    param.sub_(buf * c["lr"])


def _adadelta(param, grad, state, c) -> None:
    if not state:
        state["square_avg"], state["acc_delta"] = torch.zeros_like(param), torch.zeros_like(param)
    grad = _weight_decayed(param, grad, c)
    square_avg = state["square_avg"].mul_(c["rho"]).addcmul_(grad * c["one_minus_rho"], grad)
    std = square_avg.add(c["eps"]).sqrt_()
    delta = state["acc_delta"].add(c["eps"]).sqrt_().div_(std).mul_(grad)
    state["acc_delta"].mul_(c["rho"]).addcmul_(delta * c["one_minus_rho"], delta)
    param.sub_(delta * c["lr"])
