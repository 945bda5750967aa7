"""Every private name of Lightning this package relies on, in one place.

Lightning has no public API for three things we do: count an optimizer step taken outside its
automatic loop (``Classifier`` steps the raw optimizer or replays a CUDA graph), save
``last.ckpt`` after an epoch that saved no top-k checkpoint (``RunDirCheckpoint``), and set a
fit loop's progress to a given epoch so that a packed job's checkpoint holds what its solo run's
would (``packed.checkpoint``). Each is written here against Lightning's internals as of the
versions ``pyproject.toml`` allows; ``missing_names`` lists what a newer Lightning no longer
has, and ``tests/records/test_lightning_internals.py`` fails on it, naming the attribute.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


def count_optimizer_step(trainer: L.Trainer) -> None:
    """Tell Lightning that an optimizer step happened: global_step, max_steps and checkpoint
    names depend on it."""
    progress = trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
    progress.increment_ready()
    progress.increment_completed()


def save_last_if_nothing_saved(callback: ModelCheckpoint, trainer: L.Trainer) -> None:
    """At a training epoch's end, after ``ModelCheckpoint``'s own: write ``last.ckpt`` if this
    step saved nothing (Lightning writes it only in an epoch that also saved a top-k one)."""
    saved_now = callback._should_skip_saving_checkpoint(trainer)
    if callback.save_last and callback._should_save_on_train_epoch_end(trainer) and not saved_now:
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


def set_fit_progress(trainer: L.Trainer, epoch: int, global_step: int, train_batches: int, val_batches: int) -> None:
    """The fit loop's counters as they stand at the end of training epoch ``epoch`` (0-based),
    when a checkpoint is saved there, after ``global_step`` optimizer steps."""
    fit = trainer.fit_loop
    _set(fit.epoch_progress, epoch + 1)
    fit.epoch_progress.current.completed = fit.epoch_progress.total.completed = epoch  # saved inside the epoch
    _set(fit.epoch_loop.batch_progress, train_batches, epochs=epoch + 1)
    fit.epoch_loop.batch_progress.is_last_batch = True
    fit.epoch_loop._batches_that_stepped = (epoch + 1) * train_batches
    _set(fit.epoch_loop.manual_optimization.optim_step_progress, global_step)
    _set(fit.epoch_loop.val_loop.batch_progress, val_batches)
    fit.epoch_loop.val_loop.batch_progress.is_last_batch = True


def _set(progress, count: int, epochs: int = 1) -> None:
    """A Lightning progress counter: each count of ``current`` to ``count``, of ``total`` to
    ``count * epochs`` (the epochs so far, for counts that restart each epoch)."""
    for key in vars(progress.current):
        setattr(progress.current, key, count)
        setattr(progress.total, key, count * epochs)


def missing_names() -> list[str]:
    """The names above that this Lightning lacks (an empty list when all are there)."""
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    epoch_loop = trainer.fit_loop.epoch_loop
    places = {
        "Trainer.fit_loop.epoch_progress": (trainer.fit_loop, "epoch_progress"),
        "fit_loop.epoch_loop.batch_progress": (epoch_loop, "batch_progress"),
        "fit_loop.epoch_loop._batches_that_stepped": (epoch_loop, "_batches_that_stepped"),
        "fit_loop.epoch_loop.manual_optimization": (epoch_loop, "manual_optimization"),
        "manual_optimization.optim_step_progress": (epoch_loop.manual_optimization, "optim_step_progress"),
        "fit_loop.epoch_loop.val_loop.batch_progress": (epoch_loop.val_loop, "batch_progress"),
        "ModelCheckpoint._should_skip_saving_checkpoint": (ModelCheckpoint, "_should_skip_saving_checkpoint"),
        "ModelCheckpoint._should_save_on_train_epoch_end": (ModelCheckpoint, "_should_save_on_train_epoch_end"),
        "ModelCheckpoint._save_last_checkpoint": (ModelCheckpoint, "_save_last_checkpoint"),
        "ModelCheckpoint._monitor_candidates": (ModelCheckpoint, "_monitor_candidates"),
    }
    missing = [name for name, (owner, attribute) in places.items() if not hasattr(owner, attribute)]
    progress = getattr(getattr(epoch_loop.manual_optimization, "optim_step_progress", None), "current", None)
    if progress is not None and not {"ready", "completed"} <= set(vars(progress)):
        missing.append("optim_step_progress.current.ready/completed")
    return missing
