"""One optimizer step for M models at once, each model with its own hyperparameters.

Hand-written because torch.optim cannot do it: a torch optimizer takes one value of each
hyperparameter per param group, and a param group holds whole tensors, so M models stacked in
one ``[M, ...]`` tensor would all get the same lr, momentum, betas, ... (M param groups would
need M tensors: no stacking, and none of the speed of packing). Here each hyperparameter is a
tensor ``[M]`` (float64, the double a solo optimizer holds), and a step takes one of two roads.

On the CPU, reading the hyperparameters costs no device sync, so the models are grouped by their
hyperparameters' values and each group is stepped by torch's own functional optimizer
(``torch.optim.adam.adam``, ``sgd.sgd``, ...) on the group's slices of the stacked tensors: the
fused kernel for Adam and AdamW (one pass per tensor, as a solo run on the CPU steps them),
torch's multi-tensor (``foreach``) code for the others. A pack of one grid cell's seeds is then
one call per step, with torch's formulas and kernels rather than a dozen float64 ops plus ten
elementwise passes per tensor written out (what ``benchmarks/sweep.py`` measured as most of a
packed MLP step). On other devices, where grouping would read the hyperparameters back every
step, the update is written out with torch's single-tensor formulas (``packed.updates``).
``tests/packed/test_packed_optim.py`` checks both against torch.optim, step by step.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence

import torch
from torch.optim import adadelta, adam, adamw, rmsprop, sgd

from mnist_lab.packed.updates import written_out_step

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
        # Every model of a pack has made the same number of steps: ``steps`` on the host (the CPU
        # path, checkpoints), ``step_count`` on the device for the written-out update, which a
        # CUDA graph captures and replays (a Python number would be frozen in the graph).
        self.step_count = torch.zeros((), dtype=torch.float64, device=device)
        self._steps = 0
        self._grouping: tuple[tuple, list] | None = None  # (hyperparameter versions, _groups)
        self._grouped = device.type == "cpu"
        # as a solo run on the CPU steps Adam and AdamW (step.eager_optimizer_kwargs): fused,
        # unless the config says otherwise
        self.fused = self.cls in (torch.optim.Adam, torch.optim.AdamW) and settings[0].get("fused") is not False

    @property
    def steps(self) -> int:
        return self._steps

    @steps.setter
    def steps(self, steps: int) -> None:  # a resumed pack's step count
        self._steps = steps
        self.step_count.fill_(steps)

    def count_replayed_step(self) -> None:
        """A step a captured graph made: ``step_count`` moved inside the graph, ``steps`` here."""
        self._steps += 1

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

    @torch.no_grad()
    def step(self) -> None:
        self._steps += 1
        if self.grouped:
            self._step_by_groups()
        else:
            self.step_count.add_(1)
            written_out_step(self)

    @property
    def grouped(self) -> bool:
        """Which road ``step`` takes: the CPU's groups of models with equal hyperparameters, or
        the written-out update (other devices, and a captured step)."""
        return self._grouped

    @grouped.setter
    def grouped(self, grouped: bool) -> None:
        if not grouped:  # the written-out update counts on the device, from where the host's count is
            self.step_count.fill_(self._steps)
        self._grouped = grouped

    # ------------------------------------------------------------------ the CPU path

    def _groups(self) -> list[tuple[dict[str, float], list[slice]]]:
        """The models grouped by their hyperparameters' values: each group's values (Python
        floats, as a solo optimizer holds them) and its models as runs of consecutive indices.
        Kept until a hyperparameter tensor changes (its in-place version counter moves)."""
        versions = tuple((id(t), t._version) for t in self.hyper.values())
        if self._grouping is None or self._grouping[0] != versions:
            self._grouping = (versions, self._group_by_values())
        return self._grouping[1]

    def _group_by_values(self) -> list[tuple[dict[str, float], list[slice]]]:
        names = list(self.hyper)
        rows = torch.stack([self.hyper[n] for n in names], dim=1).tolist()
        runs: dict[tuple, list[slice]] = {}
        start = 0
        for i in range(1, len(rows) + 1):
            if i == len(rows) or rows[i] != rows[start]:
                runs.setdefault(tuple(rows[start]), []).append(slice(start, i))
                start = i
        return [(dict(zip(names, key, strict=True)), slices) for key, slices in runs.items()]

    def _state_tensor(self, state: dict, name: str, param: torch.Tensor) -> torch.Tensor:
        if name not in state:
            state[name] = torch.zeros_like(param)
        return state[name]

    def _step_by_groups(self) -> None:
        """One call of torch's functional optimizer per group of models with equal
        hyperparameters, on the group's slices of every parameter and state tensor."""
        stepped = [(p, s) for p, s in zip(self.params, self.state, strict=True) if p.grad is not None]
        first_sgd_step = self.cls is torch.optim.SGD and any("momentum_buffer" not in s for _, s in stepped)
        for h, slices in self._groups():
            cut = [(p, s, run) for p, s in stepped for run in slices]
            whole = len(slices) == 1 and slices[0] == slice(0, len(self.hyper["lr"]))  # no views needed
            params = [p if whole else p[run] for p, _, run in cut]
            grads = [p.grad if whole else p.grad[run] for p, _, run in cut]

            def sliced(name: str, cut=cut, whole=whole) -> list[torch.Tensor]:
                return [
                    self._state_tensor(s, name, p) if whole else self._state_tensor(s, name, p)[run]
                    for p, s, run in cut
                ]

            # torch counts steps per tensor and adds one before using it; every model has made
            # self.steps steps, this one included
            steps = list(torch.full((len(cut),), float(self.steps - 1)).unbind())
            if self.cls in (torch.optim.Adam, torch.optim.AdamW):
                update = adamw.adamw if self.cls is torch.optim.AdamW else adam.adam
                max_sqs = sliced("max_exp_avg_sq") if self.amsgrad else []
                extra = {} if self.cls is torch.optim.AdamW else {"decoupled_weight_decay": self.decoupled}
                update(
                    params, grads, sliced("exp_avg"), sliced("exp_avg_sq"), max_sqs, steps,
                    foreach=not self.fused, fused=self.fused or None, amsgrad=self.amsgrad,
                    beta1=h["beta1"], beta2=h["beta2"], lr=h["lr"], weight_decay=h["weight_decay"],
                    eps=h["eps"], maximize=False, **extra,
                )  # fmt: skip
            elif self.cls is torch.optim.SGD:
                buffers = [None] * len(cut) if first_sgd_step else sliced("momentum_buffer")
                sgd.sgd(
                    params, grads, buffers, foreach=True, weight_decay=h["weight_decay"],
                    momentum=h["momentum"], lr=h["lr"], dampening=h["dampening"],
                    nesterov=bool(h["nesterov"]), maximize=False,
                )  # fmt: skip
                if first_sgd_step:  # torch's first buffer is the (weight-decayed) gradient itself
                    for (p, s, run), buffer in zip(cut, buffers, strict=True):
                        if buffer is not None:
                            self._state_tensor(s, "momentum_buffer", p)[run] = buffer
            elif self.cls is torch.optim.RMSprop:
                rmsprop.rmsprop(
                    params, grads, sliced("square_avg"), sliced("grad_avg"), sliced("momentum_buffer"), steps,
                    foreach=True, lr=h["lr"], alpha=h["alpha"], eps=h["eps"], weight_decay=h["weight_decay"],
                    momentum=h["momentum"], centered=bool(h["centered"]),
                )  # fmt: skip
            else:
                adadelta.adadelta(
                    params, grads, sliced("square_avg"), sliced("acc_delta"), steps, foreach=True,
                    lr=h["lr"], rho=h["rho"], eps=h["eps"], weight_decay=h["weight_decay"], maximize=False,
                )  # fmt: skip

    # ------------------------------------------------------------------ state export (checkpoints)

    def job_state_tensors(self, i: int) -> dict[str, list[torch.Tensor]]:
        """Job ``i``'s optimizer state as torch's optimizer of its class would hold it: for each
        state name torch keeps for the job's settings, one ``[M, ...]`` tensor per parameter
        (every model's, in the packed layout: ``packed.checkpoint`` cuts out job ``i`` as it
        cuts its weights). Empty before the first step."""
        if not self.steps or not all(self.state):
            return {}
        h = {name: float(values[i]) for name, values in self.hyper.items()}
        unused = set()
        if self.cls in (torch.optim.SGD, torch.optim.RMSprop) and h["momentum"] == 0:
            unused.add("momentum_buffer")  # torch keeps no buffer without momentum
        if self.cls is torch.optim.RMSprop and not h["centered"]:
            unused.add("grad_avg")
        names = [name for name in self.state[0] if name not in unused]
        return {name: [state[name] for state in self.state] for name in names}

    def job_step_count(self) -> torch.Tensor | None:
        """torch's per-parameter ``step`` (a float32 scalar), or None for SGD, which keeps none."""
        return None if self.cls is torch.optim.SGD else torch.tensor(float(self.steps), dtype=torch.float32)
