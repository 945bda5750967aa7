"""Lightning's ModelCheckpoint, with the paths it saves following the run dir.

A checkpoint holds ModelCheckpoint's state: the absolute paths of ``best.ckpt`` and
``last.ckpt`` and the best score. Lightning keeps only ``best_model_path`` when the folder has
changed, so a run dir that was moved or copied would test the old folder's ``best.ckpt`` (or
fail on a path that is gone), and a run resumed from another run's checkpoint would test that
other run's ``best.ckpt``. Here every saved path is read as the same file name in this run's
``checkpoints/`` folder, and kept only if that file is there.

It also writes ``last.ckpt`` after every training epoch: Lightning (2.6) writes it only in an
epoch that also saved a top-k checkpoint, so after an epoch whose val/acc did not improve a
resume would go back to the last improving epoch and redo the ones after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO

from mnist_lab.records.atomic_files import replaced_atomically
from mnist_lab.records.lightning_internals import save_last_if_nothing_saved


class RunDirCheckpoint(ModelCheckpoint):
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Nothing saved at this step (val/acc did not improve): save last.ckpt all the same.
        save_last_if_nothing_saved(self, trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_dir = state_dict.get("dirpath", self.dirpath)
        if self.dirpath is None or saved_dir == self.dirpath:
            super().load_state_dict(state_dict)
            return

        def here(path: str) -> str:
            """``path``'s file in this run's checkpoints folder; "" if it is not there."""
            moved = Path(self.dirpath) / Path(path).name if path else None
            return str(moved) if moved is not None and moved.is_file() else ""

        best_k = {here(path): score for path, score in state_dict.get("best_k_models", {}).items() if here(path)}
        best = here(state_dict.get("best_model_path", ""))
        moved = {
            **state_dict,
            "dirpath": self.dirpath,
            "best_model_path": best,
            "best_model_score": state_dict.get("best_model_score") if best else None,
            "best_k_models": best_k,
            "kth_best_model_path": here(state_dict.get("kth_best_model_path", "")),
            "last_model_path": here(state_dict.get("last_model_path", "")),
        }
        if not best_k:
            moved["kth_value"] = self.kth_value  # nothing kept: every new epoch may become the best
        super().load_state_dict(moved)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save each checkpoint under a temporary name beside it, then rename: a kill -9 while
    saving leaves the previous last.ckpt whole, so ``ckpt_path=last`` always finds one.

    (Lightning writes into the system temp dir and moves the file into place, which is a copy,
    not a rename, when that dir is on another filesystem.)
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        # not named *.ckpt while half-written: nothing that looks for checkpoints picks it up
        with replaced_atomically(Path(path), suffix=".tmp") as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)
