"""Two processes on the CPU (DDP over gloo), as two GPUs would train: the replicas stay
identical (gradients are all-reduced, also for grouped small batches), the final test's
metrics and confusion matrix are computed by every process, and rank 0 alone writes the
record. Tiny runs on the synthetic data; Lightning picks a free port for each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import QUICK, read_metrics, run_cli

pytestmark = pytest.mark.slow

# experiment.run on a composed config, with a callback that gathers every process's parameters at
# the end of training; rank 0 writes how far they are apart. (With strategy=ddp Lightning
# starts rank 1 by rerunning this script with the same arguments.)
TRAIN_AND_COMPARE_REPLICAS = """
import json, os, sys
from pathlib import Path
import lightning as L
import torch
from mnist_lab.run import experiment
from tests.conftest import compose_train

class CompareReplicas(L.Callback):
    def on_train_end(self, trainer, module):
        flat = torch.cat([p.detach().flatten() for p in module.parameters()])
        replicas = trainer.strategy.all_gather(flat)
        if trainer.is_global_zero:
            Path(os.environ["REPLICAS"]).write_text(json.dumps({
                "world_size": trainer.world_size, "steps": trainer.global_step,
                "max_difference": float((replicas - replicas[0]).abs().max())}))

if __name__ == "__main__":  # ddp_spawn's processes import this file again
    build_trainer = experiment.build_trainer
    experiment.build_trainer = lambda cfg, run_dir, callbacks, *rest: build_trainer(
        cfg, run_dir, [*callbacks, CompareReplicas()], *rest
    )
    overrides = sys.argv[1:]
    experiment.run(compose_train(*overrides), Path(os.environ["RUN_DIR"]), overrides)
"""


@pytest.mark.parametrize("strategy, batch_size", [("ddp", 8), ("ddp_spawn", 64)])  # 8: groups of 4 batches
def test_two_processes_keep_identical_replicas_and_finish(tmp_path, synthetic_data_dir, strategy, batch_size):
    args = [
        *QUICK,
        "trainer.devices=2",
        f"trainer.strategy={strategy}",
        f"data.batch_size={batch_size}",
        "trainer.limit_train_batches=6",
        f"data.data_dir={synthetic_data_dir}",
    ]
    env = {
        **os.environ,
        "REPLICAS": str(tmp_path / "replicas.json"),
        "RUN_DIR": str(tmp_path / "run"),
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]),
    }
    script = tmp_path / "train_and_compare.py"
    script.write_text(TRAIN_AND_COMPARE_REPLICAS)
    result = subprocess.run(
        [sys.executable, str(script), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400
    )
    assert result.returncode == 0, result.stderr[-3000:]
    replicas = json.loads((tmp_path / "replicas.json").read_text())
    group = max(1, 32 // batch_size)
    assert replicas["world_size"] == 2 and replicas["steps"] == 2 * 6 * group  # two epochs
    assert replicas["max_difference"] == 0.0
    metrics = read_metrics(tmp_path / "run")
    assert metrics["status"] == "ok" and metrics["epochs"] == 2 and metrics["test_acc"] is not None


def test_trainer_ddp_sim_trains_two_processes_and_records_once(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    result = run_cli(
        "mnist_lab.train",
        *QUICK,
        "trainer=ddp_sim",
        "trainer.limit_train_batches=5",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        timeout=400,
    )
    assert "Starting with 2 processes" in result.stderr
    assert result.stdout.strip().splitlines()[-1].startswith("[ok] test/acc ")
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["epochs"] == 2 and len(metrics["val_acc"]) == 2
    assert metrics["train_time_s"] > 0 and metrics["test_acc"] is not None
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "checkpoints",
        "metrics.json",
        "tensorboard",
        "train.log",
    ]
