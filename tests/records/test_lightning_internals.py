"""The private names of Lightning that ``mnist_lab.records.lightning_internals`` relies on are all
there in the Lightning installed: when a new Lightning drops or renames one, this fails first,
naming it (README *Tests* says how to move the bound in pyproject.toml)."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint

from mnist_lab.records import lightning_internals


def test_every_private_lightning_name_we_use_is_there():
    assert lightning_internals.missing_names() == []


def test_a_name_lightning_dropped_is_named(monkeypatch):
    monkeypatch.delattr(ModelCheckpoint, "_save_last_checkpoint")
    assert lightning_internals.missing_names() == ["ModelCheckpoint._save_last_checkpoint"]
