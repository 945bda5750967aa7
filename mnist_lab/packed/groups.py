"""Which jobs of a sweep can share a pack: ``why_solo`` says why a job trains alone, ``pack_key``
groups the others by everything a pack's jobs must share.

A job packs only if the pack reproduces all of its run: one process on one device (the CPU or a
GPU, where the pack's step is captured as a CUDA graph as a solo run's is: ``packed.graph``),
float32, no checkpoint to resume but its own ``last.ckpt`` (``ckpt_path=last``,
``packed.resume``), no Lightning debugging or limits (``trainer.limit_*``, ``max_steps``,
``fast_dev_run``, ``overfit_batches``, a profiler), no early stopping, the default callbacks
(checkpoints as ``conf/callbacks/default.yaml`` writes them, no added callback), no
``step.cuda_graph=on`` that its solo run refuses (off a GPU, or a set-up a graph cannot follow),
and a net, loss and optimizer the packed classes implement (the net judged by what it is,
``packed.packable.packed_form_reason``; each pack proves it before training, ``packed.check.check_pack``).
Dropout packs: each job draws its solo run's masks from its own stream (``PackedNet.seed_dropout``;
on a GPU, its own masks).
Anything else runs as it does without packing, through the job's normal path.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from itertools import pairwise

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from mnist_lab import CONF_DIR
from mnist_lab.cli.config_checks import check_config, check_required
from mnist_lab.cli.console import first_line
from mnist_lab.packed.optimizer import HYPERPARAMETERS, IMPLEMENTATION, optimizer_class, settings_of, unpackable_reason
from mnist_lab.packed.pack import MUST_MATCH
from mnist_lab.packed.packable import model_reason
from mnist_lab.packed.step import loss_setting
from mnist_lab.run.step_factory import graph_unsupported_reason

DEVICES = {"cpu": "cpu", "auto": "auto", "gpu": "cuda", "cuda": "cuda"}  # trainer.accelerator -> pack device
# trainer settings a pack follows; any other trainer setting must keep the value its solo run
# has when it is not set (conf/trainer/auto.yaml's, else Lightning Trainer's default): a 0 or
# false is a setting too (limit_val_batches=0 validates nothing, logger=false logs nothing)
TRAINER_KEYS = {"accelerator", "devices", "strategy", "max_epochs", "precision"}
TRAINER_DEFAULTS = {
    **{k: p.default for k, p in inspect.signature(L.Trainer.__init__).parameters.items() if p.default is not p.empty},
    **OmegaConf.to_container(OmegaConf.load(CONF_DIR / "trainer" / "auto.yaml")),
}
PER_JOB_MODEL_KEYS = ("dropout", "conv_dropout")  # the net's shape is the rest
DEFAULT_CALLBACKS = OmegaConf.load(CONF_DIR / "callbacks" / "default.yaml")


def why_solo(cfg: DictConfig, model_reasons: dict[str, str | None] | None = None) -> str | None:
    """None if the job can train in a pack, else the reason (a few words) it trains alone.
    ``model_reasons``: ``model_reason`` by the job's resolved ``cfg.model``, kept by a caller that
    asks for many jobs at once (a sweep's plan builds each distinct net once, not once a job)."""
    try:  # a job whose settings are refused fails through its solo path, which says why
        check_required(cfg)
        check_config(cfg)
    except Exception:  # noqa: BLE001
        return "its settings are refused"
    trainer = cfg.trainer
    if cfg.get("ckpt_path") not in (None, "last"):  # a resumed sweep's jobs pack (packed.resume)
        return "it resumes a checkpoint"
    if str(trainer.get("accelerator")) not in DEVICES or trainer.get("devices") not in (1, "1"):
        return "it is not on one CPU or GPU"
    device = DEVICES[str(trainer.accelerator)]
    on_gpu = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if trainer.get("strategy", "auto") != "auto":
        return f"trainer.strategy={trainer.strategy}"
    if str(trainer.get("precision")) not in ("32-true", "32"):
        return f"trainer.precision={trainer.precision}"
    unset = object()
    extra = [k for k, v in trainer.items() if k not in TRAINER_KEYS and not same(v, TRAINER_DEFAULTS.get(k, unset))]
    if extra:
        return f"trainer.{extra[0]}={trainer[extra[0]]} is set"
    if cfg.step.cuda_graph == "on":  # a pack captures what its solo run must capture, or that run says why not
        if not on_gpu:
            return "step.cuda_graph=on off a GPU"
        scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") else None
        if graph_unsupported_reason(instantiate(cfg.optimizer), scheduler, torch.device("cuda")):
            return "step.cuda_graph=on, which its solo run cannot capture"
    callbacks = cfg.get("callbacks") or {}
    if (callbacks.get("early_stopping") or {}).get("patience") is not None:
        return "early stopping is on"
    added = sorted(set(callbacks) - set(DEFAULT_CALLBACKS))
    if added:
        return f"it adds callbacks.{added[0]}"
    checkpoint = callbacks.get("checkpoint")
    if checkpoint is not None and checkpoint != DEFAULT_CALLBACKS.checkpoint:
        return "its checkpoints are not the default ones"
    reason = _model_reason(cfg, model_reasons)
    if reason:
        return reason
    try:
        loss_setting(instantiate(cfg.loss))
        return unpackable_reason([instantiate(cfg.optimizer)])
    except Exception as error:  # noqa: BLE001  (constructors raise anything; the solo path reports it)
        return str(error)


def same(value, default) -> bool:
    """Whether a trainer setting is its default, by type too (0 is not False, 1.0 is not 1)."""
    return type(value) is type(default) and value == default


def pack_key(cfg: DictConfig) -> tuple:
    """What the jobs of one pack share: ``pack.MUST_MATCH``, the net's shape, the optimizer and
    scheduler classes and the optimizer settings that are not per job."""
    model = {k: v for k, v in OmegaConf.to_container(cfg.model, resolve=True).items() if k not in PER_JOB_MODEL_KEYS}
    make_optimizer = instantiate(cfg.optimizer)
    cls = optimizer_class(make_optimizer)
    per_job = set(HYPERPARAMETERS[cls]) | set(IMPLEMENTATION)
    fixed = {k: str(v) for k, v in settings_of(make_optimizer).items() if k not in per_job}
    scheduler = cfg.get("scheduler")
    return (
        tuple(str(OmegaConf.select(cfg, key)) for key in MUST_MATCH),
        str(sorted(model.items())),
        cls.__name__,
        str(sorted(fixed.items())),
        str(scheduler.get("_target_")) if scheduler else None,
    )


def _model_reason(cfg: DictConfig, model_reasons: dict[str, str | None] | None) -> str | None:
    if model_reasons is None:
        return model_reason(cfg)
    key = OmegaConf.to_yaml(cfg.model, resolve=True)
    if key not in model_reasons:
        model_reasons[key] = model_reason(cfg)
    return model_reasons[key]


def split_into_packs(
    cfgs: list[DictConfig],
    pack_size,
    starts: Sequence[int | None] | None = None,
    reasons: dict[int, str] | None = None,
) -> list[list[int]]:
    """The jobs (indices into ``cfgs``) as units to run, in the order of their first job: packs
    of up to ``pack_size(group)`` jobs (a callable given the group's configs, returning a number
    or a number and why it is 1; or a number), a group's packs as equal in size as can be
    (``even_chunks``), and single jobs (one that cannot pack, or a pack's remainder of one).
    ``starts``, in a resumed sweep: the epoch each job trains first (after its ``last.ckpt``'s),
    or None for one that runs alone (finished, or a checkpoint the solo path must judge); jobs
    pack only with jobs that start at the same epoch. ``reasons``, if given, gets why each job
    that runs alone does (a few words)."""
    reasons = {} if reasons is None else reasons
    model_reasons: dict[str, str | None] = {}  # each distinct net built once to judge it
    groups: dict[tuple, list[int]] = {}
    units: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        start = 0 if starts is None else starts[i]
        reason = None if start is not None else "it resumes on its own (finished, or its own run judges its checkpoint)"
        try:
            reason = reason or why_solo(cfg, model_reasons)
            key = None if reason else (*pack_key(cfg), start)
        except Exception as error:  # noqa: BLE001 - a job the planner cannot group runs as it would alone
            reason = f"its settings could not be grouped ({first_line(error)})"
        if reason:
            units.append([i])
            reasons[i] = reason
        else:
            groups.setdefault(key, []).append(i)
    for members in groups.values():
        if len(members) == 1:
            units.append(members)
            reasons[members[0]] = "no other job of the sweep shares its pack settings"
            continue
        size, why_one = _size_of(pack_size, [cfgs[i] for i in members])
        for chunk in even_chunks(members, size):
            units.append(chunk)
            if len(chunk) == 1:
                reasons[chunk[0]] = why_one if size == 1 else f"the remainder of its group after packs of {size}"
    return sorted(units, key=lambda unit: unit[0])


def even_chunks(members: list[int], size: int) -> list[list[int]]:
    """``members`` in order, in as few chunks of at most ``size`` as there can be, their sizes
    as equal as can be (16 jobs in packs of up to 5: 4, 4, 4, 4, not 5, 5, 5 and one alone,
    which would train on its own road at a single job's speed)."""
    count = -(-len(members) // size)
    if count == 0:
        return []
    # numpy.array_split splits alike, but into arrays; these are lists of job indices or configs
    small, larger = divmod(len(members), count)  # the first ``larger`` chunks take one more
    bounds = [k * small + min(k, larger) for k in range(count + 1)]
    return [members[a:b] for a, b in pairwise(bounds)]


def _size_of(pack_size, cfgs: list[DictConfig]) -> tuple[int, str]:
    """``pack_size`` for a group (at least 1), and why it is 1 where it is."""
    size = pack_size(cfgs) if callable(pack_size) else int(pack_size)
    size, why = size if isinstance(size, tuple) else (size, f"the pack size is {size}")
    return max(1, int(size)), why
