"""A packed job's ``best.ckpt`` and ``last.ckpt``: the checkpoints its solo run would write.

At the end of each epoch (after the schedulers' epoch step, where a solo run's
``callbacks.checkpoint`` saves) job i's share of the pack is written in Lightning's own
checkpoint format, as one model, so ``evaluate`` and ``predict`` load it and a solo run resumes
it with ``ckpt_path=last`` (``train.py``):

- ``state_dict``: its ``Classifier`` with the net given back as the solo class
  (``Pack.solo_net``), the run config under ``hyper_parameters``, and the history, divergence
  and train time from the solo run's own hooks;
- ``optimizer_states``: the ``state_dict`` of the torch optimizer its solo run builds
  (``step.eager_optimizer_kwargs``), its param group holding what the job's scheduler has set
  (``JobSchedules``' stand-in optimizer), its state cut out of ``PackedOptimizer``'s
  ``[M, ...]`` tensors by the same ``PackedNet.copy_into`` that cuts out its weights, so
  every tensor has the solo layout and parameter order;
- ``lr_schedulers``: its own torch scheduler's ``state_dict``;
- ``loops`` and ``callbacks``: the state of a Trainer's fit loop (epoch, batch and optimizer
  step counts) and of ``callbacks.checkpoint`` (best score and paths), set as the solo run's
  are at that epoch's end and written by Lightning's own ``state_dict`` methods. Packs run
  without early stopping (``packed.groups.why_solo``), so no EarlyStopping state.

``packed`` and ``packed_epochs`` (``RunRecord.on_save_checkpoint``) record how many jobs trained
in the pack, and for how many epochs (information only).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from mnist_lab.cli.console import quiet_lightning
from mnist_lab.packed.schedules import SCHEDULED
from mnist_lab.records.lightning_internals import set_fit_progress
from mnist_lab.records.run_dir_checkpoint import AtomicCheckpointIO
from mnist_lab.records.run_record import RunRecord
from mnist_lab.run.classifier import Classifier
from mnist_lab.run.experiment import build_callbacks
from mnist_lab.run.step import eager_optimizer_kwargs


def optimizer_state(pack, i: int, scratch: torch.nn.Module | None = None) -> dict:
    """Job ``i``'s optimizer ``state_dict`` as its solo run's torch optimizer would hold it now.
    ``scratch``: a net of the job's solo class to cut the state into (its values are overwritten;
    a job keeps one for all its checkpoints rather than build one each time)."""
    make_optimizer = pack.make_optimizers[i]
    scratch = pack.solo_net(i) if scratch is None else scratch
    solo = make_optimizer(scratch.parameters(), **eager_optimizer_kwargs(make_optimizer, pack.device))
    saved = solo.state_dict()
    group = saved["param_groups"][0]
    for key, value in pack.schedules.optimizers[i].param_groups[0].items():  # lr and what the scheduler added
        if key != "params" and (key in SCHEDULED or key not in group):
            group[key] = value
    exported = pack.optimizer.job_state_tensors(i)
    step = pack.optimizer.job_step_count() if exported else None  # no state at all before the first step
    state: dict[int, dict] = {n: {} if step is None else {"step": step.clone()} for n in group["params"]}
    params = pack.optimizer.params
    for name, tensors in exported.items():
        # Cut job i's slice out in the solo layout (transposed linear weights, ...) as its
        # weights are cut: the state tensors stand in for the pack's parameters meanwhile.
        weights = [p.data for p in params]
        try:
            for param, tensor in zip(params, tensors, strict=True):
                param.data = tensor
            pack.net.copy_into(i, scratch)
        finally:
            for param, weight in zip(params, weights, strict=True):
                param.data = weight
        for n, solo_param in zip(group["params"], scratch.parameters(), strict=True):
            state[n][name] = solo_param.detach().clone()
    return {"state": {n: s for n, s in state.items() if s}, "param_groups": [group]}


@functools.cache
def idle_trainer() -> L.Trainer:
    """A Trainer that never fits, whose loops hold a job's progress while ``SoloTrainerState.loops``
    writes it out: one per process, shared by the jobs (``loops`` sets every counter it saves)."""
    quiet_lightning()
    return L.Trainer(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def loader_lengths(data: DictConfig) -> tuple[int, int]:
    """The number of items of the training and validation loaders (groups of small batches) of
    the data config ``data``: counted once for the jobs of a sweep that share it."""
    settings = OmegaConf.to_container(data, resolve=True)
    settings.pop("shuffle_seed", None)  # the job's seed orders its batches; their count is the same
    return _counted(json.dumps(settings, sort_keys=True))


@functools.lru_cache(maxsize=8)
def _counted(settings: str) -> tuple[int, int]:
    datamodule = instantiate(json.loads(settings))
    datamodule.setup("fit")
    return len(datamodule.train_dataloader()), len(datamodule.val_dataloader())


class SoloTrainerState:
    """What a solo run's Trainer puts in its checkpoints besides the module: the fit loop's
    progress and ``callbacks.checkpoint``'s state, held by Lightning's own objects (a Trainer
    that never fits, and the run's checkpoint callback as ``run.experiment.build_callbacks`` makes it)."""

    def __init__(self, cfg: DictConfig, run_dir: Path):
        self.trainer = idle_trainer()
        callbacks = [c for c in build_callbacks(cfg, run_dir) if isinstance(c, ModelCheckpoint)]
        self.checkpoint = callbacks[0] if callbacks else None
        self.train_batches, self.val_batches = loader_lengths(cfg.data)

    def loops(self, epoch: int, global_step: int) -> dict:
        """The fit loop's state at the end of training epoch ``epoch`` (0-based), as saved there."""
        set_fit_progress(self.trainer, epoch, global_step, self.train_batches, self.val_batches)
        fit = self.trainer.fit_loop
        return {
            "fit_loop": fit.state_dict(),
            "validate_loop": self.trainer.validate_loop.state_dict(),
            "test_loop": self.trainer.test_loop.state_dict(),
            "predict_loop": self.trainer.predict_loop.state_dict(),
        }

    def callbacks(self, best: tuple[Path, float] | None, val_acc: float, last: Path | None) -> dict:
        """``callbacks.checkpoint``'s state: the best file and score, this epoch's score, the
        last file written (None: none yet)."""
        callback = self.checkpoint
        if callback is None:
            return {}
        if best is not None:
            path, score = str(best[0]), torch.tensor(best[1])
            callback.best_k_models = {path: score}
            callback.best_model_path = callback.kth_best_model_path = path
            callback.best_model_score, callback.kth_value = score, score
        callback.current_score = torch.tensor(val_acc)
        callback.last_model_path = "" if last is None else str(last)
        return {callback.state_key: callback.state_dict()}


def solo_checkpoint(
    module: Classifier,
    record: RunRecord,
    pack,
    index: int,
    trainer_state: SoloTrainerState,
    epoch: int,
    global_step: int,
    callbacks: dict,
    scratch: torch.nn.Module | None = None,
) -> dict:
    """The checkpoint job ``index``'s solo run would save at the end of ``epoch`` (0-based)
    (``scratch``: see ``optimizer_state``)."""
    schedulers = pack.schedules.schedulers
    checkpoint = {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        "loops": trainer_state.loops(epoch, global_step),
        "callbacks": callbacks,
        "optimizer_states": [optimizer_state(pack, index, scratch)],
        "lr_schedulers": [schedulers[index].state_dict()] if schedulers else [],
        "hparams_name": None,
        "hyper_parameters": dict(module.hparams),
    }
    module.on_save_checkpoint(checkpoint)
    record.on_save_checkpoint(None, module, checkpoint)
    return checkpoint


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Written as a solo run writes its checkpoints: under a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
