"""Packed sweeps under trouble (issue 26): one job's trouble stays that job's, a job packs only
if its solo run would do what the pack does, and one command gives one result."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import QUICK, compose_train, read_metrics

BASE = [*QUICK, "model.hidden=[32]", "trainer.max_epochs=2"]


def test_a_packed_jobs_folder_deleted_mid_sweep_fails_that_job_alone(tmp_path, synthetic_data_dir):
    """Job 1's folder removed after the pack's first epoch (its last.ckpt written): job 1 is
    failed, job 0 trains its second epoch, is tested and recorded ok."""
    from mnist_lab.pack import Pack
    from mnist_lab.packed_job import PackedJob
    from mnist_lab.packed_training import train_pack

    jobs_settings = (["seed=1", "optimizer.lr=0.001"], ["seed=2", "optimizer.lr=0.002"])
    cfgs = [compose_train(*BASE, f"data.data_dir={synthetic_data_dir}", *job) for job in jobs_settings]
    pack = Pack(cfgs)
    jobs = {k: PackedJob(cfg, tmp_path / f"job{k}", [], tmp_path, k) for k, cfg in enumerate(cfgs)}
    for job in jobs.values():
        job.claim()
    train_epoch = pack.train_epoch

    def remove_job_1_after_epoch_1():
        if pack.epoch == 1:
            assert (tmp_path / "job1" / "checkpoints" / "last.ckpt").is_file()
            shutil.rmtree(tmp_path / "job1")
        return train_epoch()

    pack.train_epoch = remove_job_1_after_epoch_1
    results = train_pack(pack, jobs)
    healthy = read_metrics(tmp_path / "job0")
    assert healthy["status"] == "ok" and healthy["epochs"] == 2 and healthy["test_acc"] > 0.5, healthy
    assert results[0]["status"] == "ok"
    assert results[1]["status"] == "failed" and "job1" in results[1]["error"], results[1]
