"""A full disk while a pack trains (issue 26, defect 6): the job whose checkpoint and record cannot
be written prints its ``[failed]`` line, its pack-mate goes on, and its record, which cannot say
so, stays ``running``; the sweep's end names it as not finished, with the command that resumes it."""

from __future__ import annotations

import errno
from contextlib import contextmanager
from pathlib import Path

from tests.conftest import QUICK, compose_train, read_metrics


@contextmanager
def disk_full_for(monkeypatch, folder: Path):
    """Every atomic write (records, checkpoints) under ``folder`` fails with ENOSPC while ``full[0]``."""
    from mnist_lab.records import atomic_files, run_dir_checkpoint

    full = [False]
    replaced_atomically = atomic_files.replaced_atomically

    @contextmanager
    def on_a_full_disk(path, *args, **kwargs):
        if full[0] and Path(path).is_relative_to(folder):
            raise OSError(errno.ENOSPC, "No space left on device")
        with replaced_atomically(path, *args, **kwargs) as tmp:
            yield tmp

    monkeypatch.setattr(atomic_files, "replaced_atomically", on_a_full_disk)
    monkeypatch.setattr(run_dir_checkpoint, "replaced_atomically", on_a_full_disk)
    yield full


def test_a_full_disk_while_a_pack_trains_is_named_by_the_report_with_the_resume_command(
    tmp_path, synthetic_data_dir, monkeypatch, capsys
):
    """Job 1's disk fills in its second epoch: its checkpoint and its record cannot be written, so
    its metrics.json stays ``running``; its pack-mate finishes ``ok``. The sweep's end names job 1
    as not finished, with the sweep's command and ``ckpt_path=last``, which resumes it from its
    first epoch's ``last.ckpt`` (at 065fe68 the report listed it as running and said nothing)."""
    from omegaconf import OmegaConf

    from mnist_lab.analysis.sweep import SweepReport
    from mnist_lab.packed.job import PackedJob
    from mnist_lab.packed.pack import Pack
    from mnist_lab.packed.resume import start_of
    from mnist_lab.packed.training import train_pack

    settings = [*QUICK, "model=linear", f"data.data_dir={synthetic_data_dir}"]
    cfgs = [compose_train(*settings, f"seed={seed}") for seed in (1, 2)]
    sweep_dir = tmp_path / "sweep"
    sweep_dir.mkdir()  # as Hydra makes it
    names = ("0_seed=1", "1_seed=2")
    pack = Pack(cfgs)
    jobs = {k: PackedJob(cfg, sweep_dir / names[k], [f"seed={k + 1}"], sweep_dir, k) for k, cfg in enumerate(cfgs)}
    for job in jobs.values():
        job.claim()
    train_epoch = pack.train_epoch
    with disk_full_for(monkeypatch, sweep_dir / names[1]) as full:

        def fill_the_disk_in_epoch_2():
            full[0] = pack.epoch == 1
            return train_epoch()

        pack.train_epoch = fill_the_disk_in_epoch_2
        results = train_pack(pack, jobs)
    assert results[0]["status"] == "ok" and read_metrics(sweep_dir / names[0])["status"] == "ok"
    assert results[1]["status"] == "failed" and "No space left on device" in results[1]["error"]
    stuck = read_metrics(sweep_dir / names[1])
    assert (stuck["status"], stuck["epochs"]) == ("running", 1)  # what the last write that worked said

    hydra = {
        "overrides": {
            "hydra": [f"hydra.sweep.dir={sweep_dir}", "hydra.mode=MULTIRUN"],
            "task": [*settings[:2], "seed=1,2"],
        }
    }
    (sweep_dir / "multirun.yaml").write_text(OmegaConf.to_yaml({"hydra": hydra}))
    capsys.readouterr()
    SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    printed = capsys.readouterr()
    assert printed.err.strip().splitlines()[-1] == (
        "not finished: 1_seed=2 (running); a job still running after its sweep ended was stopped before it could "
        "record why (a full disk, kill -9); once fixed, resume with: python -m mnist_lab.train -m debug=quick "
        f"model=linear seed=1,2 hydra.sweep.dir={sweep_dir} ckpt_path=last"
    )
    assert printed.out.strip().splitlines()[-1].startswith("sweep: 2 jobs, 1 ok, 0 diverged, 0 failed, 1 running in ")
    resumed = compose_train(*settings, "seed=2", "ckpt_path=last")
    assert start_of(resumed, sweep_dir / names[1]) == 1  # from its first epoch's last.ckpt
