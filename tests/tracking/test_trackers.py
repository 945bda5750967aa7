"""Trackers beside TensorBoard (``logger=``), checked against the real things: a 2-job sweep into
a real MLflow server on the loopback, W&B offline runs read back with W&B's own reader, the CSV
logger's files, a failed job's MLflow run, and the one sentence for a missing package. The
reference numbers are the run's own: its TensorBoard events and metrics.json."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mnist_lab.report import load_steps
from tests.conftest import QUICK, compose_train, read_metrics, run_cli

# Two jobs: one that finishes, one that diverges (Adam at lr=1e6) in its first epoch.
SWEEP = [*QUICK, "trainer.limit_train_batches=3", "optimizer.lr=0.001,1e6"]
STATUS = {"optimizer.lr=0.001": "ok", "optimizer.lr=1000000.0": "diverged"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on 127.0.0.1 with a SQLite store; stopped at the end, pass or fail."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed in finally
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{root}/mlflow.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start:\n{(root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its worker
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def job_dirs(sweep: Path) -> dict[str, Path]:
    """{"optimizer.lr=0.001": job folder, ...}"""
    return {
        next(o for o in read_metrics(job)["overrides"] if o.startswith("optimizer.lr=")): job
        for job in sorted(sweep.glob("[0-9]_*"))
    }


def tensorboard_steps(job: Path) -> tuple[list[int], list[float]]:
    steps = load_steps(job)
    return steps["step"].tolist(), steps["loss"].tolist()


def same(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-6) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=True)
    )


@pytest.mark.slow
def test_mlflow_server_gets_each_job_of_a_sweep(tmp_path, synthetic_data_dir, mlflow_server):
    import mlflow

    sweep = tmp_path / "sweep"
    run_cli(
        "mnist_lab.train",
        "--multirun",
        *SWEEP,
        "logger=mlflow",
        f"logger.mlflow.tracking_uri={mlflow_server}",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("sweep")  # named after the sweep dir, as typed
    assert experiment is not None
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    report = runs.pop("report")  # the sweep's report files, beside the jobs' runs
    assert report.data.tags["kind"] == "report"
    assert {a.path for a in client.list_artifacts(report.info.run_id)} == {
        "summary.csv",
        "summary.md",
        "curves.png",
        "time.png",
    }
    jobs = job_dirs(sweep)
    assert sorted(runs) == sorted(job.name for job in jobs.values())  # one run per job, named by it
    for override, job in jobs.items():
        run, metrics = runs[job.name], read_metrics(job)
        assert run.info.status == "FINISHED"
        assert run.data.tags["status"] == STATUS[override] == metrics["status"]
        params = run.data.params  # the HParams tab's set: not the logger settings
        assert params["optimizer.lr"] == params["lr"] == override.split("=")[1]
        assert params["model"] == "MLP" and params["batch_size"] == "64"
        assert params["trainer.limit_train_batches"] == "3"
        assert not any(key.startswith("logger") for key in params)
        history = client.get_metric_history(run.info.run_id, "train/loss")
        steps, losses = tensorboard_steps(job)
        assert [m.step for m in history] == steps == list(range(1, len(steps) + 1))  # every optimizer step
        assert same([m.value for m in history], losses)
        val_acc = [m.value for m in client.get_metric_history(run.info.run_id, "val/acc")]
        assert same(val_acc, metrics["val_acc"])
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "metrics.json" in artifacts
        if metrics["status"] == "ok":
            assert len(steps) == metrics["epochs"] * 3  # 3 batches an epoch
            assert math.isclose(run.data.metrics["test/acc"], metrics["test_acc"], rel_tol=1e-6)
            assert math.isclose(run.data.metrics["best/val_acc"], metrics["best_val_acc"], rel_tol=1e-6)
            [checkpoint] = client.list_artifacts(run.info.run_id, "checkpoints")
            assert checkpoint.path == "checkpoints/best.ckpt"
            assert checkpoint.file_size == (job / "checkpoints" / "best.ckpt").stat().st_size
        else:
            assert "test/acc" not in run.data.metrics  # a diverged run is not tested
            assert metrics["diverged_at_step"] in steps


def leet(run_folder: Path) -> list[dict]:
    """The records of an offline W&B run, read by W&B's own reader (``wandb leet inspect``)."""
    wandb_cli = Path(sys.executable).with_name("wandb")
    result = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_folder)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def csv_rows(job: Path) -> list[dict]:
    with open(job / "csv" / "version_0" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def column(rows: list[dict], key: str) -> list[float]:
    return [float(row[key]) for row in rows if row.get(key)]


@pytest.mark.slow
def test_wandb_offline_and_csv_get_each_job_of_a_sweep(tmp_path, synthetic_data_dir):
    """``logger=[wandb,csv]``: two trackers at once, no network (W&B offline)."""
    sweep = tmp_path / "sweep"
    run_cli(
        "mnist_lab.train",
        "--multirun",
        *SWEEP,
        "logger=[wandb,csv]",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        env={"WANDB_MODE": "offline"},
    )
    jobs = job_dirs(sweep)
    assert len(jobs) == 2
    for override, job in jobs.items():
        metrics = read_metrics(job)
        assert metrics["status"] == STATUS[override]
        steps, losses = tensorboard_steps(job)

        # W&B: one offline run per job (finished before the next job started its own)
        [run_folder] = (job / "wandb").glob("offline-run-*")
        records = leet(run_folder)
        runs = [r["run"] for r in records if r["type"] == "run"]
        assert {r["run_group"] for r in runs} == {"sweep"} and {r["display_name"] for r in runs} == {job.name}
        assert runs[-1]["tags"] == [metrics["status"]]
        config = {}
        for record in records:
            if record["type"] == "config":
                config.update(record["config"]["update"])
        assert config["optimizer.lr"] == config["lr"] == float(override.split("=")[1])
        assert config["model"] == "MLP" and not any(key.startswith("logger") for key in config)
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        per_step = [h for h in history if "train/loss" in h]
        assert [h["trainer/global_step"] for h in per_step] == steps == list(range(1, len(steps) + 1))
        assert same([float(h["train/loss"]) for h in per_step], losses)
        assert same([h["val/acc"] for h in history if "val/acc" in h], metrics["val_acc"])
        [exit_record] = [r["exit"] for r in records if r["type"] == "exit"]
        assert exit_record.get("exit_code", 0) == 0  # ok and diverged both finished their run
        if metrics["status"] == "ok":
            assert [h["test/acc"] for h in history if "test/acc" in h] == [pytest.approx(metrics["test_acc"])]

        # CSV: the same numbers as metrics.json and TensorBoard
        rows = csv_rows(job)
        assert [int(row["step"]) for row in rows if row["train/loss"]] == steps
        assert same(column(rows, "train/loss"), losses)
        for key, name in (
            ("val/acc", "val_acc"),
            ("train/acc", "train_acc"),
            ("lr", "lr"),
            ("train/loss_epoch", "train_loss"),
            ("epoch_time_s", "epoch_time_s"),
        ):
            assert same(column(rows, key), metrics[name]), key
        if metrics["status"] == "ok":
            assert same(column(rows, "test/acc"), [metrics["test_acc"]])


def test_a_failed_job_ends_its_tracker_runs_failed(tmp_path, monkeypatch, synthetic_data_dir):
    """MLflow's default SQLite store and W&B offline: the job's runs are created with its params
    before training and ended with status "failed" when the job fails."""
    import mlflow

    from mnist_lab.run import experiment

    def broken(*args, **kwargs):
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(experiment, "fit_and_test", broken)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_train(f"data.data_dir={synthetic_data_dir}", "logger=[mlflow,wandb]", "optimizer.lr=0.01")
    assert cfg.logger.mlflow.tracking_uri == "sqlite:///outputs/mlflow.db"
    with pytest.raises(RuntimeError, match="the disk is full"):
        experiment.run(cfg, tmp_path / "run", ["optimizer.lr=0.01"])
    client = mlflow.MlflowClient("sqlite:///outputs/mlflow.db")
    [run] = client.search_runs([client.get_experiment_by_name("mnist_lab").experiment_id])
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert run.data.params["optimizer.lr"] == "0.01"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json"}
    assert (tmp_path / "outputs" / "mlartifacts").is_dir()  # beside the database, not ./mlruns
    assert not (tmp_path / "mlruns").exists()
    records = leet(next((tmp_path / "run" / "wandb").glob("offline-run-*")))
    assert [r["run"].get("tags") for r in records if r["type"] == "run"][-1] == ["failed"]
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [1]
    config = [r["config"]["update"] for r in records if r["type"] == "config"]
    assert any(update.get("optimizer.lr") == 0.01 for update in config)


def test_an_mlflow_server_that_does_not_answer_is_one_sentence(tmp_path, monkeypatch):
    from mnist_lab.tracking.trackers import build_loggers, start_trackers

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    loggers = build_loggers(compose_train("logger=mlflow", f"logger.mlflow.tracking_uri={uri}"), tmp_path)
    with pytest.raises(ConnectionError) as error:
        start_trackers(loggers, {"lr": 0.1})
    assert str(error.value) == (
        f"cannot reach the MLflow server at {uri} (connection refused); start it, or set "
        "logger.mlflow.tracking_uri (the default, sqlite:///outputs/mlflow.db, needs no server)."
    )


def test_a_missing_tracker_package_is_one_sentence(tmp_path, synthetic_data_dir):
    hidden = tmp_path / "hidden"  # an mlflow that cannot be imported, as when the extra is not installed
    (hidden / "mlflow").mkdir(parents=True)
    (hidden / "mlflow" / "__init__.py").write_text("raise ImportError(\"No module named 'mlflow'\")\n")
    path = os.pathsep.join([str(hidden), *filter(None, [os.environ.get("PYTHONPATH")])])
    result = run_cli(
        "mnist_lab.train",
        *QUICK,
        "logger=[csv,mlflow]",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        check=False,
        env={"PYTHONPATH": path},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: logger=mlflow needs the mlflow package, which the trackers extra installs: "
        "pip install -e '.[trackers]'."
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training


def test_load_steps_reads_every_step_of_a_run(tensorboard_run):
    steps = load_steps(tensorboard_run)
    metrics = read_metrics(tensorboard_run)
    assert list(steps.columns) == ["step", "loss"]
    per_epoch = len(steps) // metrics["epochs"]
    assert steps["step"].tolist() == list(range(1, len(steps) + 1)) and per_epoch == 3
    epoch_means = [steps["loss"][i * per_epoch : (i + 1) * per_epoch].mean() for i in range(metrics["epochs"])]
    assert same(epoch_means, metrics["train_loss"])  # metrics.json's per-epoch mean of these steps
    with pytest.raises(ValueError, match="not a run folder"):
        load_steps(tensorboard_run / "tensorboard")


def test_a_job_refused_at_start_starts_no_tracker_run(tmp_path, monkeypatch, synthetic_data_dir):
    """A checkpoint that is not there is refused before any tracker run is created."""
    from mnist_lab.run import experiment

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    missing = tmp_path / "missing.ckpt"
    cfg = compose_train(f"data.data_dir={synthetic_data_dir}", "logger=[mlflow,wandb]", f"ckpt_path={missing}")
    with pytest.raises(Exception, match="ckpt_path"):
        experiment.run(cfg, tmp_path / "run", [f"ckpt_path={missing}"])
    assert not list((tmp_path / "run").glob("wandb/offline-run-*"))
    database = tmp_path / "outputs" / "mlflow.db"
    if database.exists():
        import mlflow

        client = mlflow.MlflowClient(f"sqlite:///{database}")
        assert not client.search_runs([e.experiment_id for e in client.search_experiments()])
