"""One optimizer step for M models at once, each model with its own hyperparameters.

Hand-written because torch.optim cannot do it: a torch optimizer takes one value of each
hyperparameter per param group, and a param group holds whole tensors, so M models stacked in
one ``[M, ...]`` tensor would all get the same lr, momentum, betas, ... (M param groups would
need M tensors: no stacking, and none of the speed of packing). Here each hyperparameter is a
tensor ``[M]`` broadcast over the model dimension, and the update is the formula of torch's
own single-tensor implementation (``torch/optim/{sgd,adam,rmsprop,adadelta}.py``, non-capturable
branch), operation by operation: ``tests/test_packed_optim.py`` checks it against torch.optim,
step by step. Hyperparameters are kept in float64 and cast to the parameters' dtype where torch
would use a Python number (a double), so each model computes what its solo optimizer computes.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch

# What each optimizer class reads from its config, per model (``betas`` becomes beta1, beta2).
HYPERPARAMETERS = {
    torch.optim.SGD: ("lr", "momentum", "dampening", "weight_decay", "nesterov"),
    torch.optim.Adam: ("lr", "betas", "eps", "weight_decay"),
    torch.optim.AdamW: ("lr", "betas", "eps", "weight_decay"),
    torch.optim.RMSprop: ("lr", "alpha", "eps", "weight_decay", "momentum", "centered"),
    torch.optim.Adadelta: ("lr", "rho", "eps", "weight_decay"),
}
# Settings that change how torch computes the step, not its numbers: any value packs.
IMPLEMENTATION = ("foreach", "fused", "capturable", "differentiable")


def optimizer_class(make_optimizer) -> type:
    return getattr(make_optimizer, "func", make_optimizer)


def settings_of(make_optimizer) -> dict:
    """Every argument of a solo optimizer (a Hydra partial), defaults filled in."""
    cls = optimizer_class(make_optimizer)
    settings = {
        name: p.default
        for name, p in inspect.signature(cls).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    settings.update(getattr(make_optimizer, "keywords", {}))
    return settings


def unpackable_reason(make_optimizers: Sequence) -> str | None:
    """None if these solo optimizers can step as one packed optimizer, else why not."""
    classes = {optimizer_class(m) for m in make_optimizers}
    if len(classes) > 1:
        return f"the optimizers differ in class ({', '.join(sorted(c.__name__ for c in classes))})"
    cls = classes.pop()
    if cls not in HYPERPARAMETERS:
        return f"{cls.__name__} has no packed update"
    settings = [settings_of(m) for m in make_optimizers]
    if any(s.get("maximize") for s in settings):
        return "maximize=true has no packed update"
    per_model = set(HYPERPARAMETERS[cls]) | set(IMPLEMENTATION)
    fixed = [{k: str(v) for k, v in s.items() if k not in per_model} for s in settings]
    if any(f != fixed[0] for f in fixed):
        return f"the optimizers' settings other than {', '.join(HYPERPARAMETERS[cls])} differ"
    return None


class PackedOptimizer:
    """Steps parameters stacked as ``[M, ...]`` with per-model hyperparameters.

    Args:
        params: the packed model's parameters, models on the first dimension.
        make_optimizers: the M solo optimizers' Hydra partials (``torch.optim.Adam`` with its
            arguments), one per model, all of one class.
    """

    def __init__(self, params, make_optimizers: Sequence[functools.partial]):
        reason = unpackable_reason(make_optimizers)
        if reason:
            raise ValueError(reason)
        self.params = [p for p in params if p.requires_grad]
        self.cls = optimizer_class(make_optimizers[0])
        settings = [settings_of(m) for m in make_optimizers]
        self.amsgrad = bool(settings[0].get("amsgrad", False))
        self.decoupled = self.cls is torch.optim.AdamW or bool(settings[0].get("decoupled_weight_decay", False))
        device = self.params[0].device
        self.hyper: dict[str, torch.Tensor] = {}
        for name in HYPERPARAMETERS[self.cls]:
            if name == "betas":
                for j, beta in enumerate(("beta1", "beta2")):
                    self.hyper[beta] = torch.tensor(
                        [float(s["betas"][j]) for s in settings], dtype=torch.float64, device=device
                    )
            else:
                self.hyper[name] = torch.tensor([float(s[name]) for s in settings], dtype=torch.float64, device=device)
        self.state: list[dict[str, torch.Tensor]] = [{} for _ in self.params]
        self.steps = 0  # every model of a pack has made the same number of steps

    def set(self, name: str, values: torch.Tensor | Sequence[float]) -> None:
        """Change one hyperparameter of every model (a scheduler's lr, momentum or betas)."""
        if name == "betas":
            values = torch.as_tensor(values, dtype=torch.float64)
            self.set("beta1", values[:, 0])
            self.set("beta2", values[:, 1])
            return
        self.hyper[name].copy_(torch.as_tensor(values, dtype=torch.float64))

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def _coefficients(self) -> dict[str, torch.Tensor]:
        """Every per-model number this step uses, computed in float64 as torch computes them in
        Python, then cast once to the parameters' dtype, as torch's kernels cast a Python number."""
        h, dtype = self.hyper, self.params[0].dtype
        c = {"lr": h["lr"], "weight_decay": h["weight_decay"]}
        if self.cls is torch.optim.SGD:
            c.update(momentum=h["momentum"], dampened=1 - h["dampening"], nesterov=h["nesterov"])
        elif self.cls in (torch.optim.Adam, torch.optim.AdamW):
            c.update(
                decay=1 - h["lr"] * h["weight_decay"],
                one_minus_beta1=1 - h["beta1"],
                beta2=h["beta2"],
                one_minus_beta2=1 - h["beta2"],
                eps=h["eps"],
                bias_correction2_sqrt=(1 - h["beta2"] ** self.steps) ** 0.5,
                step_size=h["lr"] / (1 - h["beta1"] ** self.steps),
            )
        elif self.cls is torch.optim.RMSprop:
            c.update(
                alpha=h["alpha"],
                one_minus_alpha=1 - h["alpha"],
                eps=h["eps"],
                momentum=h["momentum"],
                centered=h["centered"],
            )
        else:
            c.update(rho=h["rho"], one_minus_rho=1 - h["rho"], eps=h["eps"])
        return {name: value.to(dtype) for name, value in c.items()}

    @torch.no_grad()
    def step(self) -> None:
        self.steps += 1
        update = {
            torch.optim.SGD: self._sgd,
            torch.optim.Adam: self._adam,
            torch.optim.AdamW: self._adam,
            torch.optim.RMSprop: self._rmsprop,
            torch.optim.Adadelta: self._adadelta,
        }[self.cls]
        coefficients = self._coefficients()
        for param, state in zip(self.params, self.state, strict=True):
            if param.grad is not None:
                shape = (-1, *[1] * (param.dim() - 1))  # [M] broadcast over each model's tensor
                update(param, param.grad, state, {k: v.view(shape) for k, v in coefficients.items()})

    @staticmethod
    def _weight_decayed(param: torch.Tensor, grad: torch.Tensor, c: dict) -> torch.Tensor:
        # grad.add(param, alpha=weight_decay); torch skips it when weight_decay == 0, and adding
        # 0 * param changes nothing for a finite param.
        return grad + param * c["weight_decay"]

    def _sgd(self, param, grad, state, c) -> None:
        grad = self._weight_decayed(param, grad, c)
        if "momentum_buffer" not in state:  # torch: the first buffer is the gradient itself
            state["momentum_buffer"] = grad.clone()
        else:
            state["momentum_buffer"].mul_(c["momentum"]).add_(grad * c["dampened"])
        buf = state["momentum_buffer"]
        with_momentum = torch.where(c["nesterov"].bool(), grad + buf * c["momentum"], buf)
        grad = torch.where(c["momentum"] != 0, with_momentum, grad)  # momentum 0: plain gradient step
        param.sub_(grad * c["lr"])

    def _adam(self, param, grad, state, c) -> None:
        if not state:
            state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(param), torch.zeros_like(param)
            if self.amsgrad:
                state["max_exp_avg_sq"] = torch.zeros_like(param)
        if self.decoupled:
            param.mul_(c["decay"])
        else:
            grad = self._weight_decayed(param, grad, c)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, c["one_minus_beta1"])
        exp_avg_sq.mul_(c["beta2"]).addcmul_(grad * c["one_minus_beta2"], grad)
        if self.amsgrad:
            torch.maximum(state["max_exp_avg_sq"], exp_avg_sq, out=state["max_exp_avg_sq"])
            exp_avg_sq = state["max_exp_avg_sq"]
        denom = (exp_avg_sq.sqrt() / c["bias_correction2_sqrt"]).add_(c["eps"])
        param.sub_(exp_avg / denom * c["step_size"])

    def _rmsprop(self, param, grad, state, c) -> None:
        if not state:
            state["square_avg"], state["grad_avg"] = torch.zeros_like(param), torch.zeros_like(param)
            state["momentum_buffer"] = torch.zeros_like(param)
        grad = self._weight_decayed(param, grad, c)
        square_avg = state["square_avg"].mul_(c["alpha"]).addcmul_(grad * c["one_minus_alpha"], grad)
        grad_avg = state["grad_avg"].lerp_(grad, c["one_minus_alpha"])
        centered = torch.where(c["centered"].bool(), square_avg.addcmul(grad_avg, grad_avg, value=-1), square_avg)
        avg = centered.sqrt_().add_(c["eps"])
        # momentum 0: torch steps by grad / avg; 0 * buffer + grad / avg is exactly that
        buf = state["momentum_buffer"].mul_(c["momentum"]).addcdiv_(grad, avg)
        param.sub_(buf * c["lr"])

    def _adadelta(self, param, grad, state, c) -> None:
        if not state:
            state["square_avg"], state["acc_delta"] = torch.zeros_like(param), torch.zeros_like(param)
        grad = self._weight_decayed(param, grad, c)
        square_avg = state["square_avg"].mul_(c["rho"]).addcmul_(grad * c["one_minus_rho"], grad)
        std = square_avg.add(c["eps"]).sqrt_()
        delta = state["acc_delta"].add(c["eps"]).sqrt_().div_(std).mul_(grad)
        state["acc_delta"].mul_(c["rho"]).addcmul_(delta * c["one_minus_rho"], delta)
        param.sub_(delta * c["lr"])
