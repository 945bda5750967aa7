"""A resumed packed sweep's unfinished jobs back in a pack: each job's ``last.ckpt`` loaded into its
slice of the pack, so its remaining epochs train packed.

A job's ``last.ckpt`` is its solo run's checkpoint (``packed.checkpoint`` writes it so, and a job
resumed alone writes one through Lightning), so loading it is the inverse of the export, with
the same tools: the weights and batch-norm buffers through ``PackedNet.load_from`` (the inverse
of ``copy_into``), the optimizer's state tensors through the same function with the pack's
parameters standing in for them (as ``packed.checkpoint.optimizer_state`` cuts them out), its
step count, the job's own torch scheduler's ``state_dict`` and what the scheduler has set in its
optimizer's param group (``JobSchedules``' stand-in). The jobs of one pack must have stopped at
the same epoch (``packed.groups.split_into_packs`` groups them by it). Which checkpoint a job
resumes, and its checks, are the solo run's (``run_dir.resume_path``, ``check_checkpoint``): no
``last.ckpt`` (killed before its first epoch ended) means it starts afresh, as ``run.experiment.run``
starts it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import nn

from mnist_lab.packed.optimizer import IMPLEMENTATION
from mnist_lab.records.checkpoint_checks import check_checkpoint
from mnist_lab.records.metrics_file import METRICS_FILE, record_or_empty
from mnist_lab.records.run_dir import resume_path

FINISHED = ("ok", "diverged")  # a resumed sweep leaves these jobs as they are

# The state tensors each packed update reads once it has stepped (SGD's momentum buffer only
# exists for jobs with momentum, and is made from the first gradient: it comes from the checkpoints).
UPDATE_STATE = {
    torch.optim.Adam: ("exp_avg", "exp_avg_sq"),
    torch.optim.AdamW: ("exp_avg", "exp_avg_sq"),
    torch.optim.RMSprop: ("square_avg", "grad_avg", "momentum_buffer"),
    torch.optim.Adadelta: ("square_avg", "acc_delta"),
    torch.optim.SGD: (),
}


def start_of(cfg: DictConfig, run_dir: Path) -> int | None:
    """The epoch a job of a resumed sweep trains first: 0 for one that never started (its
    ``ckpt_path`` is set to null: it trains as in a fresh sweep) or has no last.ckpt, the epoch
    after its last.ckpt's for the others; None for a job that runs alone: a finished one (left
    as it is) and one whose checkpoint is refused (its solo run says why)."""
    if cfg.get("ckpt_path") != "last":
        return 0
    if not (run_dir / METRICS_FILE).exists():
        with open_dict(cfg):
            cfg.ckpt_path = None
        return 0
    if record_or_empty(run_dir / METRICS_FILE).get("status") in FINISHED:
        return None
    try:
        return start_epoch(last_checkpoint(cfg, run_dir))
    except Exception:  # noqa: BLE001 - train.run refuses it in one sentence
        return None


def last_checkpoint(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The checkpoint the job resumes from (``ckpt_path=last``: its ``last.ckpt``), checked as
    ``run.experiment.run`` checks it (a ``ConfigError`` if refused), or None when it starts afresh."""
    path = resume_path(cfg.get("ckpt_path"), run_dir)
    check_checkpoint(cfg, path)
    return None if path is None else torch.load(path, map_location="cpu", weights_only=True)


def start_epoch(checkpoint: dict | None) -> int:
    """The epoch (0-based) a job resumed from ``checkpoint`` trains first."""
    return 0 if checkpoint is None else int(checkpoint["epoch"]) + 1


def net_from_checkpoint(cfg: DictConfig, checkpoint: dict) -> nn.Module:
    """The job's net as its solo run's class, holding the checkpoint's weights and buffers."""
    net = instantiate(cfg.model)
    state = checkpoint["state_dict"]
    net.load_state_dict({key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")})
    return net


def load_job(pack, i: int, checkpoint: dict) -> None:
    """Job ``i``'s state from its checkpoint into the pack: optimizer state, schedule, weights."""
    (saved,) = checkpoint["optimizer_states"]
    _load_optimizer_state(pack, i, saved, net_from_checkpoint(pack.cfgs[i], checkpoint))
    pack.net.load_from(
        i, net_from_checkpoint(pack.cfgs[i], checkpoint)
    )  # after the state: it overwrote the scratch net
    group = pack.schedules.optimizers[i].param_groups[0]
    for key, value in saved["param_groups"][0].items():  # lr, momentum or betas, initial_lr, ...
        if key in group and key != "params" and key not in IMPLEMENTATION:
            group[key] = value
    if pack.schedules.schedulers:
        pack.schedules.schedulers[i].load_state_dict(checkpoint["lr_schedulers"][0])


@torch.no_grad()
def _load_optimizer_state(pack, i: int, saved: dict, net: nn.Module) -> None:
    """Job ``i``'s slice of each of the packed optimizer's ``[M, ...]`` state tensors, from torch's
    ``state_dict`` of its solo optimizer (tensors per parameter, in the solo layout and order),
    passed through ``net``'s parameters (overwritten)."""
    optimizer = pack.optimizer
    state = {int(n): s for n, s in saved["state"].items()}
    order = saved["param_groups"][0]["params"]
    names = {name for s in state.values() for name, value in s.items() if name != "step" and value is not None}
    if state:
        names |= set(UPDATE_STATE[optimizer.cls])
    solo_params = list(net.parameters())
    for name in sorted(names):
        for param, param_state in zip(optimizer.params, optimizer.state, strict=True):
            if name not in param_state:  # zero in every job's slice until a job's checkpoint fills it
                param_state[name] = torch.zeros_like(param)
        for n, solo_param in zip(order, solo_params, strict=True):
            value = state.get(int(n), {}).get(name)
            solo_param.copy_(value) if value is not None else solo_param.zero_()
        # The state tensors stand in for the pack's parameters while the net is loaded into them.
        weights = [p.data for p in optimizer.params]
        try:
            for param, param_state in zip(optimizer.params, optimizer.state, strict=True):
                param.data = param_state[name]
            pack.net.load_from(i, net)
        finally:
            for param, weight in zip(optimizer.params, weights, strict=True):
                param.data = weight
