"""A job of a pack whose loss diverges is frozen and recorded as diverged; the rest of its pack
trains on as if it had never been there."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import QUICK, compose_train, pack_losses, read_metrics, run_cli
from tests.float_tolerance import assert_losses_close

# An MLP with Adam: lr 1e6 sends the loss past step.divergence_threshold at its second step; lr
# 1e-4 and 2e-4 learn slowly (the synthetic digits are easy).
BASE = [*QUICK, "model.hidden=[32]", "trainer.max_epochs=3", "step.check_every=10"]
JOBS = [["seed=1", "optimizer.lr=0.0001"], ["seed=2", "optimizer.lr=1e6"], ["seed=3", "optimizer.lr=0.0002"]]


def test_a_diverging_job_is_frozen_and_the_rest_of_its_pack_trains_as_without_it(synthetic_data_dir):
    from mnist_lab.packed.pack import Pack
    from mnist_lab.packed.training import pack_epochs

    cfgs = [compose_train(*BASE, f"data.data_dir={synthetic_data_dir}", *job) for job in JOBS]
    pack = Pack(cfgs)
    frozen_job, epochs = [], []  # job 1's weights at the end of each epoch
    for epoch in pack_epochs(pack):
        epochs.append(epoch.losses)
        frozen_job.append(pack.solo_net(1).state_dict())
    losses = torch.cat(epochs)
    assert pack.diverged_at[0] is None and pack.diverged_at[2] is None
    assert 1 <= pack.diverged_at[1] <= 10, "found by the first check, after step.check_every=10 steps"
    assert pack.stopped_at[1] == 10
    assert float(pack.optimizer.hyper["lr"][1]) == 0.0 and pack.active.tolist() == [True, False, True]
    assert all(bool(torch.isfinite(value).all()) for value in frozen_job[0].values()), "frozen where the check found it"
    for later in frozen_job[1:]:  # frozen during the first epoch: never changed again
        for name, value in later.items():
            torch.testing.assert_close(value, frozen_job[0][name], rtol=0, atol=0, equal_nan=True)
    alone = pack_losses(Pack([cfgs[0], cfgs[2]]))
    for i, job in enumerate((0, 2)):  # a pack of three rounds otherwise than one of two
        assert_losses_close(losses[:, job], alone[:, i], what=f"job {job}")
    assert alone[-1].max() < alone[0].min(), "the other jobs should learn, or equal curves prove little"


@pytest.mark.slow
def test_a_packed_sweep_records_the_diverged_job_and_finishes_the_others(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *BASE,
        "trainer.max_epochs=2",
        "hydra/launcher=packed",
        "hydra.launcher.pack_size=3",
        "+seed_lr=[1,0.0001],[2,1e6],[3,0.0002]",
        "seed=${seed_lr[0]}",
        "optimizer.lr=${seed_lr[1]}",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    assert "sweep: 3 jobs, 2 ok, 1 diverged, 0 failed" in result.stdout, result.stdout + result.stderr
    records = {path.parent.name.split("_")[0]: read_metrics(path.parent) for path in sweep_dir.glob("*/metrics.json")}
    diverged = records["1"]
    assert diverged["status"] == "diverged" and 1 <= diverged["diverged_at_step"] <= 10
    assert diverged["epochs"] == 1 and diverged.get("test_acc") is None
    checkpoint = torch.load(sweep_dir / records["1"]["run_dir"] / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["diverged_at"] == diverged["diverged_at_step"]
    for job in ("0", "2"):
        assert records[job]["status"] == "ok" and records[job]["epochs"] == 2 and records[job]["test_acc"] > 0.5


def test_an_error_inside_a_pack_fails_its_jobs_and_keeps_what_they_had_finished(tmp_path, synthetic_data_dir):
    from mnist_lab.packed.job import PackedJob
    from mnist_lab.packed.pack import Pack
    from mnist_lab.packed.training import train_pack

    cfgs = [compose_train(*BASE, f"data.data_dir={synthetic_data_dir}", *job) for job in (JOBS[0], JOBS[2])]
    pack = Pack(cfgs)
    jobs = {k: PackedJob(cfg, tmp_path / f"job{k}", [], tmp_path, k) for k, cfg in enumerate(cfgs)}
    for job in jobs.values():
        job.claim()
    steps, step = [0], pack.step

    def failing_step(x, y):  # the second epoch's fifth step fails, as a device error would
        steps[0] += 1
        if steps[0] == pack.batches.batches + 5:
            raise RuntimeError("device lost")
        return step(x, y)

    pack.step = failing_step
    with pytest.raises(RuntimeError, match="device lost"):
        train_pack(pack, jobs)
    for k in jobs:
        record = read_metrics(tmp_path / f"job{k}")
        assert record["status"] == "failed" and "device lost" in record["error"]
        assert record["epochs"] == 1 and len(record["val_acc"]) == 1, "the finished epoch stays recorded"
        checkpoint = torch.load(tmp_path / f"job{k}" / "checkpoints" / "last.ckpt", weights_only=True)
        assert checkpoint["epoch"] == 0, "the first epoch's checkpoint is kept"


# `python -m mnist_lab.train ...` whose packs run out of memory at their first step (as a GPU's
# torch.OutOfMemoryError, faked on the CPU).
OUT_OF_MEMORY_IN_A_PACK = """
import runpy, sys, torch
from mnist_lab.packed.step import PackedStep

def out_of_memory(self, x, y):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

PackedStep.__call__ = out_of_memory
sys.argv[0] = "mnist_lab.train"
runpy.run_module("mnist_lab.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
def test_a_pack_out_of_memory_is_one_sentence_in_each_jobs_record(tmp_path, synthetic_data_dir):
    """As train.run: torch's out-of-memory error becomes the sentence that says what to lower,
    here first the pack's size, printed and recorded for each of its jobs."""
    sweep_dir = tmp_path / "sweep"
    grid = ["optimizer.lr=0.0001,0.0002", "hydra/launcher=packed", "hydra.launcher.pack_size=2"]
    result = subprocess.run(
        [sys.executable, "-c", OUT_OF_MEMORY_IN_A_PACK, "-m", *BASE, *grid, f"hydra.sweep.dir={sweep_dir}"],
        cwd=tmp_path,
        env={**os.environ, "MNIST_LAB_DATA_DIR": str(synthetic_data_dir)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    sentence = (
        "ConfigError: the GPU ran out of memory training a pack of 2 jobs with data.batch_size=64 and "
        "data.eval_batch_size=1000 (validation and test batches); train fewer jobs per pack first "
        "(hydra.launcher.pack_size=1: each job alone), then lower data.batch_size, data.eval_batch_size (e.g. "
        "data.eval_batch_size=250) or the model's size, or use trainer=cpu."
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count(f"[failed] {sentence}  run ") == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Tried to allocate" not in result.stderr
    records = [read_metrics(path.parent) for path in sweep_dir.glob("*/metrics.json")]
    assert len(records) == 2
    for record in records:
        assert record["status"] == "failed" and record["error"] == sentence


def test_a_pack_out_of_cpu_memory_names_the_cpu_and_the_pack(tmp_path, synthetic_data_dir):
    from mnist_lab.cli.config_error import ConfigError
    from mnist_lab.packed.job import PackedJob
    from mnist_lab.packed.pack import Pack
    from mnist_lab.packed.training import train_pack

    cfgs = [compose_train(*BASE, f"data.data_dir={synthetic_data_dir}", *job) for job in JOBS]
    pack = Pack(cfgs)
    jobs = {k: PackedJob(cfg, tmp_path / f"job{k}", [], tmp_path, k) for k, cfg in enumerate(cfgs)}
    for job in jobs.values():
        job.claim()

    def out_of_memory(x, y):  # what torch's CPU allocator raises
        raise RuntimeError(
            "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried "
            "to allocate 1125899906842624 bytes. Error code 12 (Cannot allocate memory)"
        )

    pack.step = out_of_memory
    with pytest.raises(
        ConfigError,
        match=r"^the CPU ran out of memory training a pack of 3 jobs .*pack_size=2, or 1 to train each job alone\)",
    ):
        train_pack(pack, jobs)
    for k in jobs:
        error = read_metrics(tmp_path / f"job{k}")["error"]
        assert error.startswith("ConfigError: the CPU ran out of memory training a pack of 3 jobs with data.batch_size")
