"""A packed job's ``best.ckpt`` and ``last.ckpt``: ordinary single-model checkpoints.

The job's weights come out of the pack as its solo net (``Pack.solo_net``), inside the
``Classifier`` its solo run would train, so the file holds what a solo run's holds for
``evaluate`` and ``predict``: ``state_dict`` (``net.*`` and the history), the run config under
``hyper_parameters``, ``epoch``, ``global_step``, ``history``, ``diverged_at``, ``train_time_s``.
It holds no optimizer, scheduler or loop state (a pack keeps those for all its jobs at once),
so it cannot be resumed from: ``packed`` marks it, and ``checkpoint_checks`` refuses it as a
``ckpt_path`` in one sentence.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from mnist_lab.classifier import Classifier
from mnist_lab.run_record import RunRecord
from mnist_lab.train import AtomicCheckpointIO

PACKED_KEY = "packed"  # in the checkpoint: how many jobs trained in its pack


def solo_checkpoint(module: Classifier, record: RunRecord, epoch: int, global_step: int, pack_size: int) -> dict:
    """The checkpoint a solo run would save at the end of ``epoch`` (0-based), weights only; the
    history, divergence and train time added by the solo run's own hooks."""
    checkpoint = {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": L.__version__,
        "state_dict": module.state_dict(),
        "hparams_name": None,
        "hyper_parameters": dict(module.hparams),
        PACKED_KEY: pack_size,
    }
    module.on_save_checkpoint(checkpoint)
    record.on_save_checkpoint(None, module, checkpoint)
    return checkpoint


def save_checkpoint(checkpoint: dict, path: Path) -> None:
    """Written as a solo run writes its checkpoints: under a temporary name, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    AtomicCheckpointIO().save_checkpoint(checkpoint, path)
