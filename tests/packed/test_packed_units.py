"""A packed sweep's units (a pack, a job alone) run elsewhere than in the launching process:
one submitit job per unit (``hydra/launcher=slurm_local``, what ``slurm`` runs on a cluster),
one Ray task per unit (``ray_cluster`` with a private Ray on this machine), one worker process
per GPU (``packed`` with ``hydra.launcher.gpus`` faked to 2 on this CPU). Each leaves the same
job records as the packed launcher running every unit in its own process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from mnist_lab.analysis import summary as report
from tests.conftest import QUICK, read_metrics, run_cli
from tests.packed.test_packed_launcher import assert_same_record

pytestmark = pytest.mark.slow

# three jobs; with pack_size=2, two units: a pack of jobs 0 and 1, job 2 alone
GRID = ["trainer.max_epochs=1", "optimizer.lr=0.00001,0.00002,0.00003", "hydra.launcher.pack_size=2"]
UNIT = re.compile(r"unit: (jobs? [\d, ]+) in process (\d+) \(CUDA_VISIBLE_DEVICES=([\w,]*)\)")


def sweep(tmp_path, data_dir, name: str, *launcher: str, env: dict | None = None) -> tuple:
    """The data dir goes in the config: Ray's workers do not get this environment."""
    sweep_dir = tmp_path / name
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *QUICK,
        *launcher,
        *GRID,
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        env=env,
    )
    return sweep_dir, result.stdout + result.stderr


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, synthetic_data_dir):
    """The sweep with every unit run in the launching process."""
    tmp_path = tmp_path_factory.mktemp("packed_units")
    sweep_dir, output = sweep(
        tmp_path, synthetic_data_dir, "in_process", "hydra/launcher=packed", "hydra.launcher.gpus=0"
    )
    assert "Launching 3 jobs locally: 2 in 1 packs, 1 alone" in output and not UNIT.search(output)
    return sweep_dir


def assert_same_jobs(sweep_dir, in_process, output: str) -> None:
    assert "sweep: 3 jobs, 3 ok, 0 diverged, 0 failed" in output
    jobs = sorted(path.name for path in in_process.iterdir() if (path / "metrics.json").is_file())
    assert len(jobs) == 3
    for job in jobs:
        assert_same_record(read_metrics(sweep_dir / job), read_metrics(in_process / job), job)
        assert read_metrics(sweep_dir / job)["run_dir"] == str(sweep_dir / job)


def test_slurm_local_runs_one_submitit_job_per_unit(in_process, tmp_path, synthetic_data_dir):
    sweep_dir, output = sweep(tmp_path, synthetic_data_dir, "slurm", "hydra/launcher=slurm_local")
    assert "Launching 3 jobs as 2 submitit jobs: 2 in 1 packs, 1 alone" in output
    logs = sorted((sweep_dir / ".submitit").glob("*/*_log.out"))
    assert len(logs) == 2  # one submitit job per unit, not per job
    units = sorted(UNIT.search(log.read_text()).group(1) for log in logs)
    assert units == ["job 2", "jobs 0, 1"]
    assert_same_jobs(sweep_dir, in_process, output)


PRIVATE_RAY = [
    "hydra.launcher.ray.init.address=null",  # a private Ray on this machine
    "+hydra.launcher.ray.init.num_cpus=2",
    "+hydra.launcher.ray.init.include_dashboard=false",
]
# else a new private Ray writes a token to ~/.ray/auth_token, which the `ray start` cluster of
# test_launchers.py then takes up and its driver is refused
NO_RAY_TOKEN = {"RAY_AUTH_MODE": "disabled"}


@pytest.mark.parametrize(
    "launcher, stop",
    [
        (["hydra/launcher=slurm_local"], signal.SIGUSR2),  # submitit's preemption signal: a requeue
        (["hydra/launcher=ray_cluster", *PRIVATE_RAY], signal.SIGKILL),  # its worker dies: Ray retries the task
    ],
    ids=["submitit_requeue", "ray_retry"],
)
def test_a_unit_stopped_and_run_again_resumes_its_jobs_from_last_ckpt(launcher, stop, tmp_path, synthetic_data_dir):
    sweep_dir, epochs = tmp_path / "stopped", 12
    args = [*QUICK, f"trainer.max_epochs={epochs}", "optimizer.lr=0.00001,0.00002", *launcher]
    args += ["hydra.launcher.pack_size=2", f"data.data_dir={synthetic_data_dir}", f"hydra.sweep.dir={sweep_dir}"]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "mnist_lab.train", "-m", *args],
        cwd=tmp_path,
        env={**os.environ, **NO_RAY_TOKEN},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal (test_resume.py)
    )
    deadline = time.monotonic() + 300
    while len(list(sweep_dir.glob("[01]_*/checkpoints/last.ckpt"))) < 2:  # both jobs past their first epoch
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    (events,) = sweep_dir.glob("0_*/tensorboard/events.out.tfevents.*")  # named after the process writing it
    os.kill(int(events.name.split(".")[-2]), stop)
    output = sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, output[-3000:]
    assert "sweep: 2 jobs, 2 ok, 0 diverged, 0 failed" in output
    jobs = list(sweep_dir.glob("[01]_*"))
    assert len(jobs) == 2
    for job in jobs:
        record = read_metrics(job)
        assert record["status"] == "ok" and record["epochs"] == epochs, record
        steps = [event.step for event in report._loss_events(job)]
        assert set(steps) == set(range(1, 40 * epochs + 1))
        assert steps.count(1) == 1  # resumed from its last.ckpt, not trained again from step 1
        last = torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["packed"] == 2  # the unit ran again as a pack, not as its jobs alone


def test_ray_runs_one_task_per_unit(in_process, tmp_path, synthetic_data_dir):
    sweep_dir, output = sweep(
        tmp_path,
        synthetic_data_dir,
        "ray",
        "hydra/launcher=ray_cluster",
        *PRIVATE_RAY,
        env=NO_RAY_TOKEN,
    )
    assert "Launching 3 jobs as 2 Ray tasks: 2 in 1 packs, 1 alone" in output
    # the lines Ray's tasks print, under Ray's (possibly coloured) prefix
    tasks = re.findall(r"\(run_unit_remote pid=\d+\)\S* " + UNIT.pattern, output)
    assert sorted(task[0] for task in tasks) == ["job 2", "jobs 0, 1"]
    assert_same_jobs(sweep_dir, in_process, output)


def test_units_spread_over_faked_gpus_one_worker_process_each(in_process, tmp_path, synthetic_data_dir):
    sweep_dir, output = sweep(tmp_path, synthetic_data_dir, "gpus", "hydra/launcher=packed", "hydra.launcher.gpus=2")
    assert "Launching 3 jobs on 2 GPUs (0, 1): 2 in 1 packs, 1 alone" in output
    units = UNIT.findall(output)  # printed by the worker that ran the unit
    assert sorted(unit for unit, _, _ in units) == ["job 2", "jobs 0, 1"]
    assert len({pid for _, pid, _ in units}) == 2  # two processes
    assert sorted(gpu for _, _, gpu in units) == ["0", "1"]  # each its own GPU, and both got work
    assert output.count("(packed: 2 jobs)") == 2
    assert_same_jobs(sweep_dir, in_process, output)


def test_units_spread_over_gpus_only_when_each_job_uses_one_device(monkeypatch):
    import torch
    from omegaconf import OmegaConf

    from mnist_lab.packed.launch import PackedLaunch
    from mnist_lab.packed.units import Unit

    def units(**trainer) -> list[Unit]:
        task = OmegaConf.create({"trainer": {"accelerator": "auto", "devices": 1, **trainer}})
        return [Unit([0], [task], [task]), Unit([1], [task], [task])]

    def gpus_for(gpus, **trainer) -> list[str]:
        return PackedLaunch(1, None, None, None, gpus).gpus_for(units(**trainer))

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert gpus_for(3) == ["0", "1", "2"] and gpus_for(2, accelerator="cpu") == ["0", "1"]
    assert gpus_for(3, devices=2) == [] and gpus_for(3, accelerator="gpu", devices="2") == []
    assert gpus_for("auto", accelerator="cpu") == []  # a CPU sweep stays in one process
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the GPUs this process was given
    assert gpus_for(2) == ["4", "6"]
    with pytest.raises(ValueError, match=r"hydra.launcher.gpus=3 asks for more GPUs than the 2 this process sees"):
        gpus_for(3)  # never a GPU outside the process's own list
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a machine with two GPUs
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert gpus_for("auto", accelerator="gpu") == ["0", "1"] and gpus_for("auto", accelerator="auto") == ["0", "1"]
    assert gpus_for("auto", accelerator="cpu") == [] and gpus_for("auto", accelerator="gpu", devices=2) == []
    with pytest.raises(ValueError, match="use hydra.launcher.gpus=auto or a number up to 2"):
        gpus_for(4)


@pytest.mark.parametrize(
    "launcher, setting, sentence",
    [
        (
            "packed",
            "gpus=-1",
            "error: hydra.launcher.gpus=-1 must be auto or a whole number of at least 0 "
            "(0 or 1: the units run in this process).",
        ),
        (
            "slurm_local",
            "pack_size=0",
            "error: hydra.launcher.pack_size=0 must be auto or a whole number of at least 1.",
        ),
        (
            "ray_cluster",
            "pack_size=x",
            "error: hydra.launcher.pack_size=x must be auto or a whole number of at least 1.",
        ),
    ],
)
def test_a_bad_launcher_setting_is_one_sentence(tmp_path, launcher, setting, sentence):
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *QUICK,
        f"hydra/launcher={launcher}",
        f"hydra.launcher.{setting}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode != 0 and result.stderr.strip() == sentence
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl_c", "sigterm"])
def test_a_sweep_over_gpus_stopped_records_its_running_jobs_and_starts_no_other(
    stop, code, tmp_path, synthetic_data_dir
):
    sweep_dir = tmp_path / "stopped"
    args = [*QUICK, "trainer.max_epochs=50", "optimizer.lr=0.00001,0.00002,0.00003", "hydra/launcher=packed"]
    args += ["hydra.launcher.pack_size=1", "hydra.launcher.gpus=2", f"data.data_dir={synthetic_data_dir}"]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "mnist_lab.train", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # Ctrl-C as from a terminal: a background job (CI started with &) inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 300
    while len(list(sweep_dir.glob("[01]_*/checkpoints/last.ckpt"))) < 2:  # both workers' jobs training
        assert sweep.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    if stop == signal.SIGINT:
        os.killpg(sweep.pid, stop)  # Ctrl-C reaches every process of the group, the workers too
    else:
        sweep.send_signal(stop)  # kill <pid>, or a scheduler's SIGTERM: the launching process only
    output = sweep.communicate(timeout=120)[0]
    assert sweep.returncode == code, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "interrupted: the running jobs are recorded as interrupted; resume with: the same command" in output
    assert [read_metrics(job)["status"] for job in sorted(sweep_dir.glob("[01]_*"))] == ["interrupted"] * 2
    assert not list(sweep_dir.glob("2_*/metrics.json")), "the third job must not start after the stop"
