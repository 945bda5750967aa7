"""A sweep dir holds one sweep (issue 26, defect 5): a resume (``ckpt_path=last``) runs the sweep
the dir holds, or is refused before anything is written; one sweep runs in a dir at a time."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from tests.conftest import QUICK, read_metrics, run_cli

GRID = ["optimizer.lr=0.001,0.01", "seed=1,2"]
SWEEP = ["mnist_lab.train", "-m", *QUICK, "trainer.max_epochs=1", "model.hidden=[16]"]


def files_of(sweep_dir):
    """Every file under the dir (hidden ones too) and its bytes."""
    return {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, synthetic_data_dir):
    """A finished packed sweep of four jobs (job n in folder n_…); each test runs on a copy."""
    sweep_dir = tmp_path_factory.mktemp("finished") / "sweep"
    run_cli(*SWEEP, *GRID, f"hydra.sweep.dir={sweep_dir}", cwd=sweep_dir.parent, data_dir=synthetic_data_dir)
    return sweep_dir


def its_command(sweep_dir) -> str:
    return (
        f"python -m mnist_lab.train -m debug=quick trainer.max_epochs=1 'model.hidden=[16]' {' '.join(GRID)} "
        f"hydra.sweep.dir={sweep_dir} ckpt_path=last"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "grid, difference",
    [
        (["optimizer.lr=0.001,0.1", "seed=1,2"], "optimizer.lr is 0.001,0.01 there and 0.001,0.1 here"),
        (
            ["data.batch_size=32,64"],
            "optimizer.lr is 0.001,0.01 there and not set here; seed is 1,2 there and not set here; "
            "data.batch_size is not set there and 32,64 here",
        ),
    ],
    ids=["changed_grid", "another_sweeps_dir"],
)
def test_a_resume_of_another_grid_is_refused_before_anything_is_written(
    finished_sweep, tmp_path, synthetic_data_dir, grid, difference
):
    """At 065fe68 the changed grid made a second 1_ folder and a report of both grids, and the
    other sweep's grid wrote two job 0s and two job 1s and overwrote its multirun.yaml."""
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(finished_sweep, sweep_dir)
    before = files_of(sweep_dir)
    result = run_cli(
        *SWEEP, *grid, f"hydra.sweep.dir={sweep_dir}", "ckpt_path=last",
        cwd=tmp_path, data_dir=synthetic_data_dir, check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout[-2000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {sweep_dir} holds another sweep ({difference}); give this sweep its own hydra.sweep.dir, "
        f"or resume that one with its command: {its_command(sweep_dir)}"
    )
    assert files_of(sweep_dir) == before


@pytest.mark.slow
def test_a_resume_with_its_overrides_reordered_resumes_each_job_in_its_folder(
    finished_sweep, tmp_path, synthetic_data_dir
):
    """Hydra numbers `seed=1,2 optimizer.lr=…` in another order (its job 1 is seed=1 lr=0.01): at
    065fe68 that job got a new folder 1_… beside the old job 1's. Job 2 never ran here."""
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(finished_sweep, sweep_dir)
    (job_2,) = sweep_dir.glob("2_*")
    assert "optimizer.lr=0.01,seed=1" in job_2.name
    shutil.rmtree(job_2)
    finished = {
        path: data
        for path, data in files_of(sweep_dir).items()
        if path.relative_to(sweep_dir).parts[0].startswith(("0_", "1_", "3_"))
    }
    assert len(finished) > 3 * 4  # each job's record, .hydra/, checkpoints and events
    result = run_cli(
        *SWEEP, *reversed(GRID), f"hydra.sweep.dir={sweep_dir}", "ckpt_path=last",
        cwd=tmp_path, data_dir=synthetic_data_dir,
    )  # fmt: skip
    assert sorted(p.name for p in sweep_dir.iterdir() if p.is_dir()) == sorted(
        p.name for p in finished_sweep.iterdir() if p.is_dir()
    ), result.stdout[-2000:]
    assert read_metrics(job_2)["status"] == "ok"
    assert OmegaConf.load(job_2 / ".hydra" / "overrides.yaml")[-3:] == ["seed=1", "optimizer.lr=0.01", "ckpt_path=last"]
    assert {path: data for path, data in files_of(sweep_dir).items() if path in finished} == finished
    assert "sweep: 4 jobs, 4 ok" in result.stdout


@pytest.mark.slow
def test_a_second_sweep_into_a_running_sweeps_dir_is_refused_and_a_killed_ones_lock_does_not_block(
    tmp_path, synthetic_data_dir
):
    """Sweep A stopped (SIGSTOP) while it trains: a resume B of it is refused with A named, and
    writes nothing; once A is killed (-9), resume C runs. At 065fe68 B trained A's jobs too."""
    sweep_dir = tmp_path / "sweep"
    command = [*SWEEP, "seed=1,2", "trainer.max_epochs=3", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MNIST_LAB_DATA_DIR": str(synthetic_data_dir)}
    sweep_a = subprocess.Popen(
        [sys.executable, "-m", *command], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        while not list(sweep_dir.glob("*/metrics.json")) and sweep_a.poll() is None:
            time.sleep(0.05)  # until A has claimed a job's folder
        sweep_a.send_signal(signal.SIGSTOP)
        assert sweep_a.poll() is None, "A ended before it could be stopped"
        before = files_of(sweep_dir)
        sweep_b = run_cli(*command, "ckpt_path=last", cwd=tmp_path, data_dir=synthetic_data_dir, check=False)
        assert sweep_b.returncode == 1, sweep_b.stdout[-2000:]
        line = sweep_b.stderr.strip().splitlines()[-1]
        assert line.startswith(f"error: another sweep is running in {sweep_dir} (pid {sweep_a.pid} on "), line
        assert line.endswith("; wait for it to end (or stop it), then run this command again."), line
        assert files_of(sweep_dir) == before
        fresh = run_cli(*command, cwd=tmp_path, data_dir=synthetic_data_dir, check=False)  # no ckpt_path
        assert (
            fresh.stderr.strip()
            .splitlines()[-1]
            .startswith(f"error: another sweep is running in {sweep_dir} (pid {sweep_a.pid} on ")
        ), fresh.stderr[-2000:]
        assert files_of(sweep_dir) == before
        report = run_cli("mnist_lab.report", str(sweep_dir), cwd=tmp_path, check=False)  # its jobs still train
        assert f"; the sweep is still running (pid {sweep_a.pid} on " in report.stderr, report.stderr[-2000:]
    finally:
        sweep_a.kill()
        sweep_a.wait()
    sweep_c = run_cli(*command, "ckpt_path=last", cwd=tmp_path, data_dir=synthetic_data_dir)
    assert "sweep: 2 jobs, 2 ok" in sweep_c.stdout


def test_each_job_folder_keeps_its_number_and_a_folder_of_no_job_is_refused(tmp_path):
    """What `records.sweep_dir` reads from the job folders alone (no multirun.yaml): a resume's jobs
    are numbered as their folders; a second folder of job 1 (left by a changed-grid resume at
    065fe68) or a folder of a job the command does not make is refused."""
    from mnist_lab.cli.config_error import ConfigError
    from mnist_lab.records.sweep_dir import jobs_for

    def job_folder(name, *overrides):
        (tmp_path / name / ".hydra").mkdir(parents=True)
        (tmp_path / name / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(list(overrides)))

    job_folder("0_lr=1,seed=1", "lr=1", "seed=1")
    job_folder("2_lr=2,seed=1", "lr=2", "seed=1")
    hydra_order = [["seed=1", "lr=1"], ["seed=1", "lr=2"], ["seed=2", "lr=1"], ["seed=2", "lr=2"]]
    with_resume = [[*job, "ckpt_path=last"] for job in hydra_order]
    assert jobs_for(tmp_path, with_resume, True, None) == [
        with_resume[0],
        with_resume[2],
        with_resume[1],
        with_resume[3],
    ]
    job_folder("2_lr=3,seed=1", "lr=3", "seed=1")
    with pytest.raises(ConfigError, match=r"holds the job folder 2_lr=3,seed=1 \(lr=3 seed=1\), which is not a job"):
        jobs_for(tmp_path, with_resume, True, None)
    shutil.rmtree(tmp_path / "2_lr=3,seed=1")
    job_folder("3_lr=1,seed=1", "lr=1", "seed=1")  # job 0 again
    with pytest.raises(ConfigError, match=r"holds two folders of one job \(0_lr=1,seed=1 and 3_lr=1,seed=1\); remove"):
        jobs_for(tmp_path, with_resume, True, None)
    shutil.rmtree(tmp_path / "3_lr=1,seed=1")
    job_folder("7_lr=2,seed=2", "lr=2", "seed=2")  # a job of the command, at a number past its four
    with pytest.raises(ConfigError, match=r"holds the job folder 7_lr=2,seed=2, whose number does not fit"):
        jobs_for(tmp_path, with_resume, True, None)


def test_a_sweep_is_named_as_the_holder_while_it_checks_the_dir_and_a_refused_one_leaves_the_old_name(tmp_path):
    """A second sweep refused while the first still checks the dir must name the first, not the
    sweep that ran there before (whose name the holder file still has)."""
    from mnist_lab.cli.config_error import ConfigError
    from mnist_lab.cli.sweep_lock import hold, release, running_sweep

    holder = tmp_path / ".sweep.holder"
    holder.write_text("pid 1 on old-host, started 2026-01-01 00:00:00: an earlier sweep\n")
    seen = hold(tmp_path, lambda: running_sweep_from_another_descriptor(tmp_path, running_sweep))
    release()
    assert seen.startswith(f"pid {os.getpid()} on "), seen

    def refused():
        raise ConfigError("this sweep's grid differs")

    holder.write_text("pid 1 on old-host, started 2026-01-01 00:00:00: an earlier sweep\n")
    with pytest.raises(ConfigError):
        hold(tmp_path, refused)
    assert holder.read_text().startswith("pid 1 on old-host")  # a refused sweep leaves the dir as it was


def running_sweep_from_another_descriptor(sweep_dir, running_sweep) -> str | None:
    """What a second sweep would be told now: ``running_sweep`` as another process sees it (this
    process's own lock is skipped by path, so the check runs with it set aside)."""
    from mnist_lab.cli import sweep_lock

    held, sweep_lock._held = sweep_lock._held, None
    try:
        return running_sweep(sweep_dir)
    finally:
        sweep_lock._held = held


def test_two_folders_of_one_number_are_named_both(tmp_path):
    from mnist_lab.cli.config_error import ConfigError
    from mnist_lab.records.sweep_dir import numbered

    jobs = [["seed=0"], ["seed=1"], ["seed=2"]]
    started = [(1, "1_seed=1", ["seed=1"]), (1, "1_seed=2", ["seed=2"])]
    with pytest.raises(ConfigError) as refused:
        numbered(jobs, started, tmp_path)
    assert str(refused.value) == (
        f"{tmp_path} holds two folders numbered 1 (1_seed=1 and 1_seed=2), of different jobs; move one of them "
        "out of it, then run this command again."
    )
    assert numbered(jobs, [(2, "2_seed=0", ["seed=0"])], tmp_path) == [["seed=1"], ["seed=2"], ["seed=0"]]


def test_a_damaged_overrides_file_is_read_from_the_record_or_named(tmp_path):
    """A full disk can leave ``.hydra/overrides.yaml`` cut short: the job is then known by its
    record's overrides, and where the record names none either, the refusal names the folder."""
    import json

    from mnist_lab.cli.config_error import ConfigError
    from mnist_lab.records.sweep_dir import started_jobs

    folder = tmp_path / "0_seed=0"
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text("- seed=0\n- [optimizer.lr")  # cut short
    (folder / "metrics.json").write_text(json.dumps({"status": "ok", "overrides": ["seed=0"]}))
    assert started_jobs(tmp_path) == [(0, "0_seed=0", ["seed=0"])]
    (folder / "metrics.json").write_text(json.dumps({"status": "running"}))
    with pytest.raises(ConfigError) as refused:
        started_jobs(tmp_path)
    assert str(refused.value) == (
        f"{tmp_path} holds the job folder 0_seed=0, whose .hydra/overrides.yaml cannot be read and whose record "
        "names no overrides; move that folder out of it, then run this command again."
    )
