"""Checkpoints written before the package moved into subpackages keep loading.

``linear_e2720c3.ckpt`` was written by ``python -m mnist_lab.train model=linear trainer=cpu
trainer.max_epochs=1 trainer.limit_train_batches=5 data.val_size=1000`` at commit e2720c3,
when every module sat flat in ``mnist_lab/``; its run config names ``mnist_lab.models.MLP``,
``torch.nn.CrossEntropyLoss`` and ``mnist_lab.data.MNISTDataModule``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from hydra.utils import get_class

from mnist_lab.records.checkpoint_loading import load_checkpoint
from tests.conftest import run_cli

OLD_CHECKPOINT = Path(__file__).with_name("linear_e2720c3.ckpt")


def test_the_targets_a_checkpoint_of_the_flat_layout_names_still_resolve():
    config = torch.load(OLD_CHECKPOINT, weights_only=True)["hyper_parameters"]["config"]
    for part in ("model", "loss", "data"):
        assert get_class(config[part]["_target_"]).__name__ == config[part]["_target_"].rsplit(".", 1)[-1]


def test_evaluate_and_load_a_checkpoint_of_the_flat_layout(tmp_path, synthetic_data_dir):
    _, config, net, _ = load_checkpoint(OLD_CHECKPOINT, torch.device("cpu"))
    state = torch.load(OLD_CHECKPOINT, weights_only=True)["state_dict"]
    x = torch.randn(4, 1, 28, 28)
    weight, bias = state["net.1.weight"], state["net.1.bias"]  # softmax regression: flatten, then one linear layer
    torch.testing.assert_close(net(x), x.flatten(1) @ weight.T + bias)
    checkpoint = tmp_path / OLD_CHECKPOINT.name  # evaluate writes its figure beside the checkpoint
    shutil.copy(OLD_CHECKPOINT, checkpoint)
    result = run_cli("mnist_lab.evaluate", f"ckpt_path={checkpoint}", f"data_dir={synthetic_data_dir}", cwd=tmp_path)
    assert "test/acc" in result.stdout
    assert (tmp_path / "linear_e2720c3.confusion_matrix.png").is_file()
