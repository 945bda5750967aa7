"""Shared fixtures: a small synthetic MNIST (class-dependent patterns a model must learn), and a
helper that runs the real CLI in a subprocess, as a user would."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one pytest-xdist worker per core: each worker, and every process its tests
    # start, trains on one thread, or the workers' OpenMP threads fight over the cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)

import numpy as np
import pytest

from mnist_lab.data import mnist_arrays, mnist_files

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT / "data"


def synthetic_arrays(n_train: int = 3000, n_test: int = 600, seed: int = 0) -> dict[str, np.ndarray]:
    """Digits 0-9 as a bright 7x7 block at one of ten positions, plus noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for c in range(10):
            row, col = divmod(c, 5)
            images[labels == c, 2 + row * 12 : 9 + row * 12, 2 + col * 5 : 7 + col * 5] += 180
        return images, labels

    train_images, train_labels = make(n_train)
    test_images, test_labels = make(n_test)
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


def write_idx_files(directory: Path, arrays: dict[str, np.ndarray]) -> None:
    names = dict(zip(mnist_files.FILES, ("train_images", "train_labels", "test_images", "test_labels"), strict=True))
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, key in names.items():
        (directory / file_name).write_bytes(mnist_files.idx_bytes(arrays[key]))


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A data_dir holding synthetic IDX files and the parsed cache the data module reads."""
    data_dir = tmp_path_factory.mktemp("synthetic_mnist")
    arrays = synthetic_arrays()
    write_idx_files(mnist_files.raw_dir(data_dir), arrays)
    mnist_arrays.save_cache(data_dir, arrays)
    return data_dir


def checksums_of(directory: Path) -> dict[str, tuple[str, str]]:
    """(md5, sha256) of each IDX file in ``directory``, in the form of mnist_files.CHECKSUMS."""
    return {
        name: (
            hashlib.md5((directory / name).read_bytes()).hexdigest(),
            hashlib.sha256((directory / name).read_bytes()).hexdigest(),
        )
        for name in mnist_files.FILES
    }


def compose_train(*overrides: str, hydra: bool = False):
    """conf/train.yaml with ``overrides``, as ``python -m mnist_lab.train`` composes it
    (``hydra``: with the hydra node, for the sweeper's and launcher's settings)."""
    from hydra import compose, initialize_config_dir

    from mnist_lab.train import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def pack_losses(pack):
    """Every step's losses ``[steps, M]`` (on the CPU), ``pack`` trained to its end by the sweeps'
    epoch loop (``packed.training.pack_epochs``)."""
    import torch

    from mnist_lab.packed.training import pack_epochs

    return torch.cat([epoch.losses for epoch in pack_epochs(pack)])


# A CLI run small and quick on the synthetic data (conf/debug/quick.yaml).
QUICK = ["debug=quick"]


def run_cli(
    module: str,
    *args: str,
    cwd: Path,
    data_dir: Path | None = None,
    check: bool = True,
    timeout: float = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """Run ``python -m <module> <args>`` the way the README shows; return the finished process."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    if data_dir is not None:
        full_env["MNIST_LAB_DATA_DIR"] = str(data_dir)
    result = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        output = f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        raise AssertionError(f"{module} {' '.join(args)} exited {result.returncode}:\n{output}")
    return result


def read_metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


# A tiny run that fills every TensorBoard dashboard: 3 steps per epoch at a low learning rate
# leave it making mistakes, so the misclassified-digits grid is written too. These two stay
# overrides: the HParams test checks that a run's overrides become HParams.
TENSORBOARD_RUN = [*QUICK, "trainer.limit_train_batches=3", "optimizer.lr=0.0001"]


@pytest.fixture(scope="session")
def tensorboard_run(tmp_path_factory, synthetic_data_dir) -> Path:
    """A finished tiny run dir (metrics.json, tensorboard/), shared by the dashboard tests."""
    run_dir = tmp_path_factory.mktemp("tensorboard_run") / "run"
    run_cli(
        "mnist_lab.train", *TENSORBOARD_RUN, f"hydra.run.dir={run_dir}", cwd=run_dir.parent, data_dir=synthetic_data_dir
    )
    return run_dir


def sweep_parts(breakdown: str) -> dict[str, float]:
    """The parts a sweep's last line names, ``start-up 4.1 s, ...`` (``cli.sweep_clock.breakdown``)."""
    return {name.strip(): float(seconds) for name, seconds in re.findall(r"([a-z -]+) ([\d.]+) s", breakdown)}
