"""``--multirun`` as the README shows it, on synthetic data: job folders named by their
overrides, the report at the end of the sweep (and on demand), TensorBoard HParams, a
diverged and a failed job that do not end the sweep, and MNIST loaded once per process."""

from __future__ import annotations

import csv
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import metadata as hparams_metadata

from tests.conftest import QUICK, read_metrics, run_cli

pytestmark = pytest.mark.slow  # real sweeps, several jobs each

# `python -m mnist_lab.train ...`, with MNIST's parsing (mnist_arrays.load_arrays) and the
# tensors the data module gets (data.device_tensors) counted, printed when the process exits.
COUNTING_TRAIN = """
import atexit, runpy, sys
from mnist_lab.data import datamodule as data, mnist_arrays

parsed, storages = [], set()
load_arrays, device_tensors = mnist_arrays.load_arrays, data.device_tensors

def counted_load_arrays(*args, **kwargs):
    parsed.append(args)
    return load_arrays(*args, **kwargs)

def counted_device_tensors(*args, **kwargs):
    tensors = device_tensors(*args, **kwargs)
    storages.add(tensors["train_x"].untyped_storage().data_ptr())
    return tensors

mnist_arrays.load_arrays, data.device_tensors = counted_load_arrays, counted_device_tensors
atexit.register(lambda: print(f"parsed {len(parsed)} times; {len(storages)} device copies"))
sys.argv[0] = "mnist_lab.train"
runpy.run_module("mnist_lab.train", run_name="__main__", alter_sys=True)
"""


def read_summary(sweep_dir: Path) -> list[dict]:
    with open(sweep_dir / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def closing_line(stdout: str) -> str:
    return [line for line in stdout.splitlines() if line.startswith("sweep: ")][-1]


def assert_png(path: Path) -> None:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000, path


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory, synthetic_data_dir) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's grid, run from an empty folder: outputs/multirun/<date>/<time>/."""
    cwd = tmp_path_factory.mktemp("lr_sweep")
    result = subprocess.run(
        [sys.executable, "-c", COUNTING_TRAIN, "--multirun", "optimizer.lr=0.001,0.01,0.1", *QUICK],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MNIST_LAB_DATA_DIR": str(synthetic_data_dir)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (sweep_dir,) = (cwd / "outputs" / "multirun").glob("*/*")
    return sweep_dir, result


def test_lr_sweep_leaves_one_folder_per_job_and_the_report(lr_sweep):
    sweep_dir, result = lr_sweep
    jobs = sorted(d.name for d in sweep_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    assert len(jobs) == 3
    for number, lr in enumerate(("0.001", "0.01", "0.1")):
        (job,) = [name for name in jobs if name.startswith(f"{number}_")]
        assert f"optimizer.lr={lr}" in job.partition("_")[2].split(",") and "/" not in job and " " not in job
        metrics = read_metrics(sweep_dir / job)
        assert metrics["status"] == "ok" and metrics["epochs"] == 2
        assert f"optimizer.lr={lr}" in metrics["overrides"]

    rows = read_summary(sweep_dir)
    assert sorted(row["job"] for row in rows) == jobs
    assert [row["status"] for row in rows] == ["ok"] * 3
    best = [float(row["best_val_acc"]) for row in rows]
    assert best == sorted(best, reverse=True) and best[0] > 0.9
    for row in rows:
        assert float(row["test_acc"]) > 0.5 and float(row["train_time_s"]) > 0
        assert float(row["final_train_loss"]) >= 0 and row["epochs"] == "2"
    assert "optimizer.lr=0.001" in (sweep_dir / "summary.md").read_text()
    assert_png(sweep_dir / "curves.png")
    assert_png(sweep_dir / "time.png")
    assert closing_line(result.stdout).startswith("sweep: 3 jobs, 3 ok, 0 diverged, 0 failed")
    assert "best_val_acc" in result.stdout  # the Rich table


def test_a_plain_multirun_packs_its_jobs(lr_sweep):
    """No hydra/launcher override: the packed launcher (conf/train.yaml). The three jobs share a
    net, and on the CPU pack_size=auto packs up to 16 such small jobs, so they train as one pack."""
    sweep_dir, result = lr_sweep
    output = result.stdout + result.stderr
    assert "pack size 3 for 3 jobs of train MLP [128]" in output and "(on the CPU: up to 16 jobs a pack" in output
    assert "Launching 3 jobs locally: 3 in 1 packs, 0 alone" in output
    for number, lr in enumerate(("0.001", "0.01", "0.1")):  # each job announced as Hydra's basic launcher does
        assert f"#{number} : optimizer.lr={lr} debug=quick" in output
    assert result.stdout.count("(packed: 3 jobs)") == 3
    assert [read_metrics(job.parent)["packed"] for job in sweep_dir.glob("*/metrics.json")] == [3, 3, 3]
    with open(sweep_dir / "summary.csv") as f:  # the report says whose train_time_s is a pack's
        assert [row["packed"] for row in csv.DictReader(f)] == ["3", "3", "3"]


def test_lr_sweep_parses_mnist_and_moves_it_to_the_device_once(lr_sweep):
    _, result = lr_sweep
    assert "parsed 1 times; 1 device copies" in result.stdout, result.stdout[-2000:]


def test_tensorboard_shows_every_job_named_by_its_overrides_with_hparams(lr_sweep):
    sweep_dir, _ = lr_sweep
    runs = EventMultiplexer()
    runs.AddRunsFromDirectory(str(sweep_dir))  # what `tensorboard --logdir <sweep dir>` does
    runs.Reload()
    hparams_runs = runs.PluginRunToTagToContent(hparams_metadata.PLUGIN_NAME)
    assert len(hparams_runs) == 3
    swept_lrs = set()
    for run, tags in hparams_runs.items():
        assert "optimizer.lr=" in run.split("/")[0]  # the run's name is its job folder
        start = hparams_metadata.parse_session_start_info_plugin_data(tags[hparams_metadata.SESSION_START_INFO_TAG])
        hparams = {key: v.string_value or v.number_value for key, v in start.hparams.items()}
        assert {"model", "optimizer", "loss", "lr", "batch_size", "optimizer.lr"} <= set(hparams)
        assert hparams["model"] == "MLP" and hparams["batch_size"] == 64
        swept_lrs.add(hparams["optimizer.lr"])
        experiment = hparams_metadata.parse_experiment_plugin_data(tags[hparams_metadata.EXPERIMENT_TAG])
        metric_tags = {info.name.tag for info in experiment.metric_infos}
        assert {"best/val_acc", "test/acc", "train_time_s"} <= metric_tags
        assert runs.Scalars(run, "best/val_acc")[0].value > 0.5
    assert swept_lrs == {0.001, 0.01, 0.1}  # numbers, as the config has them


def test_report_on_demand_rewrites_the_report(lr_sweep, tmp_path):
    sweep_dir = shutil.copytree(lr_sweep[0], tmp_path / "sweep")
    for name in ("summary.csv", "summary.md", "curves.png", "time.png"):
        (sweep_dir / name).unlink()
    result = run_cli("mnist_lab.report", str(sweep_dir), cwd=tmp_path)
    assert len(read_summary(sweep_dir)) == 3 and (sweep_dir / "summary.md").exists()
    assert_png(sweep_dir / "curves.png")
    assert_png(sweep_dir / "time.png")
    assert "wrote summary.csv" in result.stdout and "best_val_acc" in result.stdout


def test_a_damaged_metrics_file_is_a_failed_row_that_says_so(lr_sweep, tmp_path):
    sweep_dir = shutil.copytree(lr_sweep[0], tmp_path / "sweep")
    damaged = sorted(sweep_dir.glob("*/metrics.json"))[0]
    damaged.write_text('{\n"status": "ok",')  # cut off by hand, or by a full disk outside mnist_lab
    run_cli("mnist_lab.report", str(sweep_dir), cwd=tmp_path)
    rows = {row["job"]: row for row in read_summary(sweep_dir)}
    assert len(rows) == 3
    row = rows[damaged.parent.name]
    assert row["status"] == "failed" and row["error"].startswith(f"{damaged} is not valid JSON")
    assert row["error"].endswith("delete it or rerun the job")
    assert sum(r["status"] == "ok" for r in rows.values()) == 2


def test_files_written_atomically_get_the_usual_permissions(tmp_path):
    from mnist_lab.records.atomic_files import write_atomic

    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "summary.md", b"table")
    finally:
        os.umask(umask)
    assert (tmp_path / "summary.md").stat().st_mode & 0o777 == 0o644  # readable by others, as open() makes it
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]  # no temp file left


def test_report_on_a_folder_without_jobs_says_what_to_pass(tmp_path):
    result = run_cli("mnist_lab.report", str(tmp_path), cwd=tmp_path, check=False)
    assert result.returncode == 1
    assert "holds no job folders" in result.stderr and "outputs/multirun/" in result.stderr


def test_diverged_and_failed_jobs_are_rows_and_the_sweep_goes_on(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "mnist_lab.train",
        "-m",
        "optimizer.lr=0.001,1e6,-1",
        *QUICK,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    rows = {
        lr: row for row in read_summary(sweep_dir) for lr in row["overrides"].split() if lr.startswith("optimizer.lr=")
    }
    assert rows["optimizer.lr=0.001"]["status"] == "ok"
    diverged = rows["optimizer.lr=1000000.0"]  # Hydra parsed 1e6 as a float
    assert diverged["status"] == "diverged" and int(diverged["diverged_at_step"]) >= 1
    failed = rows["optimizer.lr=-1"]
    assert failed["status"] == "failed" and failed["error"]
    assert closing_line(result.stdout).startswith("sweep: 3 jobs, 1 ok, 1 diverged, 1 failed")
    assert_png(sweep_dir / "curves.png")


def test_a_sweep_with_three_seeds_reports_each_point_over_its_seeds(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "mnist_lab.train",
        "-m",
        "optimizer.lr=0.001,0.1",
        "seed=range(3)",
        *QUICK,
        "trainer.limit_train_batches=4",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    from mnist_lab.analysis.summary import load

    jobs = load(sweep_dir)
    assert len(jobs) == 6 and sorted(jobs["seed"]) == [0, 0, 1, 1, 2, 2]
    for lr, group in jobs.groupby("optimizer.lr"):  # three seeds: three different trainings
        assert group["final_train_loss"].nunique() == 3, (lr, list(group["final_train_loss"]))
    points = {row["point"]: row for row in read_summary(sweep_dir)}
    assert sorted(p.split()[0] for p in points) == ["optimizer.lr=0.001", "optimizer.lr=0.1"]
    for point, row in points.items():
        seeds = jobs[jobs["point"] == point]["best_val_acc"]
        assert row["n"] == "3" and row["status"] == "3 ok"
        assert float(row["best_val_acc_mean"]) == pytest.approx(seeds.mean())
        assert float(row["best_val_acc_ci_low"]) <= seeds.mean() <= float(row["best_val_acc_ci_high"])
    summary = (sweep_dir / "summary.md").read_text()
    assert "**What these seeds resolve**" in summary and "with 3 seeds per point" in summary
    verdict = next(row["best_val_acc_vs_best"] for row in points.values() if row["best_val_acc_vs_best"] != "best")
    assert verdict in ("worse", "not resolved by 3 seeds")
    assert_png(sweep_dir / "curves.png")
    assert "vs best" in result.stdout and "Welch" in result.stdout  # the printed table
    assert closing_line(result.stdout).startswith("sweep: 6 jobs, 6 ok")


def test_a_time_figure_says_when_its_times_are_packs():
    from mnist_lab.analysis.figures import time_title

    alone = [{"packed": None}, {"packed": math.nan}]  # read_job's None, a pandas frame's NaN
    assert time_title("train time per job", alone) == "train time per job"
    assert "the time of their whole pack" in time_title("train time per job", [*alone, {"packed": 4}])
