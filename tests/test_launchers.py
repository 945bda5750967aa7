"""The optional launchers and the Optuna search (``pip install -e '.[launchers]'``), each a real
sweep on synthetic data: joblib worker processes, submitit jobs on this machine (what the SLURM
preset runs on a cluster), Ray tasks on a Ray cluster this test starts on loopback, and a TPE
search. Every one must leave the usual job folders and report."""

from __future__ import annotations

import csv
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from mnist_lab.train import CONF_DIR
from tests.conftest import QUICK, read_metrics, run_cli

pytestmark = pytest.mark.slow
RAY = Path(sys.executable).with_name("ray")


def sweep(tmp_path: Path, data_dir: Path, *overrides: str) -> tuple[Path, str]:
    """A two-job lr sweep (or ``overrides``' own); the data dir is passed in the config, as the
    environment of this process does not reach Ray's workers."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *overrides,
        *QUICK,
        "trainer.max_epochs=1",
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
    )
    return sweep_dir, result.stdout + result.stderr


def assert_every_job_reported(sweep_dir: Path, jobs: int, output: str) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == jobs and {row["status"] for row in rows} == {"ok"}, rows
    for row in rows:
        metrics = read_metrics(sweep_dir / row["job"])
        assert metrics["status"] == "ok" and metrics["best_val_acc"] > 0.5
    assert (sweep_dir / "curves.png").stat().st_size > 0 and (sweep_dir / "time.png").exists()
    assert f"sweep: {jobs} jobs, {jobs} ok, 0 diverged, 0 failed" in output
    return rows


def test_presets_are_the_plugins_launchers_with_our_settings():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):

        def launcher(name: str):
            overrides = [f"hydra/launcher={name}"]
            return compose("train", overrides=overrides, return_hydra_config=True).hydra.launcher

        assert launcher("local_parallel")._target_ == launcher("joblib")._target_
        assert launcher("local_parallel").n_jobs == 2
        slurm = launcher("slurm")
        assert slurm._target_.endswith("PackedSlurmLauncher") and slurm.gpus_per_node == 1
        # GPU presets: one job per task until GPU jobs pack (a pack would run its jobs in a row there)
        assert slurm.pack_size == 1 and launcher("slurm_local")._target_.endswith("PackedLocalLauncher")
        assert launcher("ray_gpus").ray.remote.num_gpus == 1 and launcher("ray_gpus").pack_size == 1
        assert launcher("ray_cluster").ray.remote.num_gpus == 0 and launcher("ray_cluster").pack_size == "auto"
        for key in ("partition", "timeout_min", "array_parallelism", "cpus_per_task", "setup"):
            assert key in slurm, key


def test_joblib_runs_jobs_in_worker_processes(tmp_path, synthetic_data_dir):
    sweep_dir, output = sweep(tmp_path, synthetic_data_dir, "hydra/launcher=local_parallel", "optimizer.lr=0.001,0.01")
    assert "Joblib.Parallel(n_jobs=2," in output
    assert_every_job_reported(sweep_dir, 2, output)


def test_submitit_local_runs_real_submitit_jobs(tmp_path, synthetic_data_dir):
    sweep_dir, output = sweep(tmp_path, synthetic_data_dir, "hydra/launcher=submitit_local", "optimizer.lr=0.001,0.01")
    assert len(list((sweep_dir / ".submitit").glob("*/*_0_log.out"))) == 2  # submitit's job logs
    assert_every_job_reported(sweep_dir, 2, output)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """``ray start --head`` on 127.0.0.1 (its own ports and temp dir); stopped afterwards."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit
    port = free_port()
    log = Path(temp_dir) / "ray_start.log"
    with open(log, "w") as out:
        head = subprocess.Popen(
            [
                str(RAY),
                "start",
                "--head",
                "--block",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-port={free_port()}",
                "--include-dashboard=false",
                "--num-cpus=2",
                "--disable-usage-stats",
                f"--temp-dir={temp_dir}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(1)
        yield f"127.0.0.1:{port}"
    finally:
        head.terminate()  # --block: SIGTERM stops every process of this Ray node
        try:
            head.wait(timeout=90)
        except subprocess.TimeoutExpired:
            head.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_launcher_runs_jobs_as_tasks_on_a_cluster(ray_cluster, tmp_path, synthetic_data_dir):
    sweep_dir, output = sweep(
        tmp_path,
        synthetic_data_dir,
        "hydra/launcher=ray_cluster",
        f"hydra.launcher.ray.init.address={ray_cluster}",
        "hydra.launcher.pack_size=1",  # no packing: each job its own Ray task, as with the plugin's launcher
        "optimizer.lr=0.001,0.01",
    )
    assert "Connecting to existing Ray cluster" in output and "Launching 2 jobs as 2 Ray tasks" in output
    assert output.count("(run_unit_remote pid=") >= 2  # each job's lines come from its Ray task
    assert_every_job_reported(sweep_dir, 2, output)


def test_optuna_search_maximizes_best_val_acc_and_gets_the_report(tmp_path, synthetic_data_dir):
    sweep_dir, output = sweep(tmp_path, synthetic_data_dir, "hparams_search=optuna", "hydra.sweeper.n_trials=3")
    rows = assert_every_job_reported(sweep_dir, 3, output)
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert set(results["best_params"]) == {"optimizer.lr", "data.batch_size", "model.hidden"}
    assert results["best_value"] == pytest.approx(max(float(row["best_val_acc"]) for row in rows))
    for row in rows:  # each trial's sampled values are its overrides
        assert "optimizer.lr=" in row["overrides"] and "model.hidden=" in row["overrides"]
