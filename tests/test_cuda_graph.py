"""The CUDA-graph training step: taken on the GPU, refused with a reason elsewhere, and in
agreement with the eager step (same loss curve shape, final accuracy within 0.3 pp)."""

from __future__ import annotations

import statistics

import pytest
import torch

from tests.conftest import QUICK, read_metrics, run_cli

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


def test_cpu_run_takes_the_eager_step_and_cuda_graph_on_is_refused(tmp_path, synthetic_data_dir):
    from mnist_lab.classifier import Classifier
    from mnist_lab.cuda_graph import graph_unsupported_reason
    from mnist_lab.models import MLP

    module = Classifier(MLP(), torch.nn.CrossEntropyLoss(), torch.optim.Adam)
    assert graph_unsupported_reason(module) == "the model is not on a CUDA device"
    result = run_cli("mnist_lab.train", *QUICK, "trainer.cuda_graph=on", f"hydra.run.dir={tmp_path / 'r'}",
                     cwd=tmp_path, data_dir=synthetic_data_dir, check=False)  # fmt: skip
    assert result.returncode != 0
    assert "trainer.cuda_graph=on but the model is not on a CUDA device; use trainer.cuda_graph=auto." in result.stderr
    assert "Traceback" not in result.stderr


def run_on_gpu(tmp_path, name: str, *overrides: str) -> dict:
    """Real MNIST from $MNIST_LAB_DATA_DIR (or ./data)."""
    run_dir = tmp_path / name
    run_cli("mnist_lab.train", "trainer.accelerator=gpu", "trainer.max_epochs=3", *overrides,
            f"hydra.run.dir={run_dir}", cwd=tmp_path)  # fmt: skip
    return read_metrics(run_dir)


@needs_cuda
@pytest.mark.parametrize("overrides", [
    ["model=mlp", "model.hidden=[64,128,64]", "model.batch_norm=true", "model.dropout=0.1"],
    ["model=cnn", "optimizer=adamw", "optimizer.weight_decay=0.01", "scheduler=onecycle"],
    ["model=mlp", "optimizer=sgd", "optimizer.lr=0.05", "optimizer.momentum=0.9", "scheduler=step"],
    ["model=mlp", "optimizer=rmsprop", "optimizer.weight_decay=1e-4"],
])  # fmt: skip
def test_graph_and_eager_steps_agree_over_three_seeds(tmp_path, overrides):
    """Real MNIST on the GPU: mean final test accuracy within 0.3 pp, loss curves alike."""
    graph, eager = [], []
    for seed in (1, 2, 3):
        graph.append(run_on_gpu(tmp_path, f"g{seed}", *overrides, f"seed={seed}", "trainer.cuda_graph=on"))
        eager.append(run_on_gpu(tmp_path, f"e{seed}", *overrides, f"seed={seed}", "trainer.cuda_graph=off"))
    gap = statistics.mean(m["test_acc"] for m in graph) - statistics.mean(m["test_acc"] for m in eager)
    print(f"{' '.join(overrides)}: graph - eager test acc = {100 * gap:+.2f} pp")
    assert abs(gap) <= 0.003
    for g, e in zip(graph, eager):
        assert g["train_loss"][-1] < g["train_loss"][0] and e["train_loss"][-1] < e["train_loss"][0]
        assert g["train_loss"][-1] == pytest.approx(e["train_loss"][-1], rel=0.35)
