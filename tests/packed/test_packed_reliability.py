"""Packed sweeps under trouble (issue 26): one job's trouble stays that job's, a job packs only
if its solo run would do what the pack does, and one command gives one result."""

from __future__ import annotations

import shutil

import pytest
import torch

from tests.conftest import QUICK, compose_train, read_metrics, run_cli

BASE = [*QUICK, "model.hidden=[32]", "trainer.max_epochs=2"]


def test_a_packed_jobs_folder_deleted_mid_sweep_fails_that_job_alone(tmp_path, synthetic_data_dir):
    """Job 1's folder removed after the pack's first epoch (its last.ckpt written): job 1 is
    failed, job 0 trains its second epoch, is tested and recorded ok."""
    from mnist_lab.packed.job import PackedJob
    from mnist_lab.packed.pack import Pack
    from mnist_lab.packed.training import train_pack

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


# Trainer settings that change what a run does although they are 0 or false: each one packed at
# e2720c3, and the pack ignored it.
IGNORED_BY_A_PACK = [
    "+trainer.enable_checkpointing=false",
    "+trainer.logger=false",
    "trainer.limit_val_batches=0",
    "+trainer.limit_test_batches=0",
    "+trainer.max_steps=0",
]


@pytest.mark.parametrize("setting", IGNORED_BY_A_PACK)
def test_a_trainer_setting_a_pack_would_ignore_keeps_the_job_out_of_packs(synthetic_data_dir, setting):
    from mnist_lab.packed.groups import why_solo

    settings = [*QUICK, "trainer=cpu", f"data.data_dir={synthetic_data_dir}"]
    assert why_solo(compose_train(*settings)) is None, "the same job without the setting packs"
    assert why_solo(compose_train(*settings, "trainer.deterministic=false")) is None, "a default packs"
    reason = why_solo(compose_train(*settings, setting))  # its own key, or refused by the checks
    assert reason in (f"{setting.lstrip('+')} is set", "its settings are refused"), reason


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            "+trainer.enable_checkpointing=false",
            "error: trainer.enable_checkpointing is set by mnist_lab.train itself, not by the trainer group; "
            "drop that override (to train without checkpoints, write ~callbacks.checkpoint).",
        ),
        (
            "+trainer.logger=false",
            "error: trainer.logger is set by mnist_lab.train itself, not by the trainer group; drop that "
            "override (TensorBoard is always written; logger=csv, mlflow or wandb adds a tracker).",
        ),
        (
            "+trainer.limit_test_batches=0",
            "error: trainer.limit_test_batches=0 tests on no batch, and a run's result is its test; give a "
            "number of batches (at least 1), a fraction of them in (0, 1], or null for all.",
        ),
    ],
    ids=["enable_checkpointing", "logger", "limit_test_batches"],
)
def test_the_solo_run_of_such_a_setting_is_one_sentence(tmp_path, synthetic_data_dir, setting, message):
    """At e2720c3 the first two were a TypeError (the Trainer got the argument twice), the third
    trained and then failed with `list index out of range`."""
    result = run_cli("mnist_lab.train", *QUICK, setting, cwd=tmp_path, data_dir=synthetic_data_dir, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in result.stderr


def test_pack_size_auto_gives_one_command_one_packing_on_the_cpu(synthetic_data_dir, monkeypatch):
    """An Adam group of two jobs long enough for e2720c3's probe (batch 4, 5 epochs: 6,250
    job-steps), planned twice, once with packing timed slow and once fast (as a busy CPU times it), the same
    pack size both times, chosen without timing anything."""
    from mnist_lab.packed import size_probe as pack_size

    timings = iter([1.0, 4.0, 1.0, 1.0])  # (one job alone, a pack of two) in the first run, then the second
    monkeypatch.setattr(pack_size, "timed", lambda steps, count, warmup, device: next(timings))
    settings = [
        *QUICK,
        f"data.data_dir={synthetic_data_dir}",
        "optimizer=adam",
        "data.batch_size=4",
        "trainer.max_epochs=5",
    ]
    cfgs = [compose_train(*settings, f"optimizer.lr={lr}") for lr in (0.01, 0.02)]
    first, second = (pack_size.pack_size(cfgs, torch.device("cpu"))[0] for _ in range(2))
    assert first == second == 2


def test_a_sweep_refused_at_start_leaves_no_multirun_yaml(tmp_path, synthetic_data_dir):
    """Hydra's sweeper writes multirun.yaml before it checks the jobs' overrides; at e2720c3 the
    corrected command was then refused as a second sweep into the dir."""
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "mnist_lab.train", "-m", *QUICK, "loss=hinge,ce", f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path, data_dir=synthetic_data_dir, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: loss=hinge is not an option")
    assert not (sweep_dir / "multirun.yaml").exists()


def test_the_printed_sweep_resume_line_gives_hydra_the_sweep_dir_back(tmp_path, monkeypatch, capsys):
    """A packed sweep stopped by Ctrl-C prints how to resume it; pasted into a shell, its
    hydra.sweep.dir override parses back to the dir (at e2720c3 it was not quoted)."""
    import shlex

    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mnist_lab.packed import pack_run

    sweep_dir = tmp_path / "a b=c ü"

    def stopped(pack, jobs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pack_run, "train_pack", stopped)
    with pytest.raises(SystemExit) as stop:
        pack_run.trained(None, {}, sweep_dir)
    assert stop.value.code == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    words = shlex.split(line.partition("resume with: the same command, ")[2])
    assert words[-1] == "ckpt_path=last"
    override = OverridesParser.create().parse_overrides(words[:1])[0]
    assert (override.key_or_group, override.value()) == ("hydra.sweep.dir", str(sweep_dir))


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            {"gpus": -1},
            "hydra.launcher.gpus=-1 must be auto or a whole number of at least 0 "
            "(0 or 1: the units run in this process).",
        ),
        ({"pack_size": None}, "hydra.launcher.pack_size=null must be auto or a whole number of at least 1."),
    ],
    ids=["gpus_negative", "pack_size_null"],
)  # fmt: skip
def test_a_bad_launcher_setting_is_named_as_typed(setting, message):
    from hydra_plugins.mnist_lab_packed_launcher.packed_launcher import PackedLauncher

    with pytest.raises(ValueError) as error:
        PackedLauncher(**setting)
    assert str(error.value) == message


@pytest.mark.parametrize(
    "raised, code, line",
    [
        (KeyboardInterrupt, 130, "interrupted (Ctrl-C) while the sweep report was written (every job is recorded); "),
        ("Terminated", 143, "interrupted (SIGTERM) while the sweep report was written (every job is recorded); "),
        (
            OSError(28, "No space left on device"),
            1,
            "error: the sweep report was not written (OSError: [Errno 28] No space left on device); once fixed: ",
        ),
    ],
    ids=["ctrl_c", "sigterm", "disk_full"],
)
def test_trouble_while_the_sweep_report_is_written_is_one_line_and_its_exit_code(
    tmp_path, monkeypatch, capsys, raised, code, line
):
    """At e2720c3: Ctrl-C there printed the start-up's "nothing was written", SIGTERM was lost
    (exit 0) or got Ctrl-C's words, a full disk was Hydra's warning and exit 0."""
    from omegaconf import OmegaConf

    from mnist_lab.analysis import summary as report
    from mnist_lab.analysis.sweep import SweepReport
    from mnist_lab.cli.exit_codes import Terminated

    error = Terminated() if raised == "Terminated" else raised

    def write_report(sweep_dir, show=True):
        raise error

    monkeypatch.setattr(report, "write_report", write_report)
    sweep_dir = tmp_path / "sweep"
    with pytest.raises(SystemExit) as stop:
        SweepReport().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}}))
    assert stop.value.code == code
    assert capsys.readouterr().err.strip() == f"{line}python -m mnist_lab.report {sweep_dir}"


def test_sigterm_while_a_packed_sweep_is_planned_is_143_and_leaves_no_multirun_yaml(tmp_path, monkeypatch, capsys):
    """At e2720c3 (the probe's timing, then): exit 1, Ctrl-C's words, "nothing was written", yet
    multirun.yaml stayed, so the same command was refused as a second sweep."""
    from omegaconf import OmegaConf

    from mnist_lab.cli import sweep_start
    from mnist_lab.cli.exit_codes import Terminated
    from mnist_lab.packed import launch as packed_launcher

    sweep_dir = tmp_path / "sweep"
    sweep_start.note_fresh(sweep_dir)  # as SweepReport.on_multirun_start notes a fresh sweep
    sweep_dir.mkdir()
    (sweep_dir / "multirun.yaml").write_text("hydra: {}\n")  # as Hydra's sweeper writes it

    def planning(self, job_overrides, initial_job_idx):
        raise Terminated()

    monkeypatch.setattr(packed_launcher.PackedLaunch, "plan", planning)
    monkeypatch.setattr(packed_launcher.signal, "signal", lambda *args: None)  # keep pytest's handlers
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
    with pytest.raises(SystemExit) as stop:
        packed_launcher.PackedLaunch(2, None, None, config).launch([["seed=1"]], 0)
    assert stop.value.code == 143
    assert capsys.readouterr().err.strip() == (
        "interrupted (SIGTERM) while the sweep was planned, before any job started; run the same command again."
    )
    assert not (sweep_dir / "multirun.yaml").exists()


def test_a_pack_whose_every_job_diverged_stops_at_that_check(synthetic_data_dir):
    """As a solo run stops within the epoch where its loss went bad; at e2720c3 the pack trained
    on to the end of the epoch (and of the sweep's time)."""
    from mnist_lab.packed.pack import Pack

    settings = [*BASE, f"data.data_dir={synthetic_data_dir}", "step.check_every=10"]
    pack = Pack([compose_train(*settings, f"seed={seed}", "optimizer.lr=1e6") for seed in (1, 2)])
    losses, _ = pack.train_epoch()
    assert pack.diverged_at[0] is not None and pack.diverged_at[1] is not None
    assert losses.shape[0] == pack.steps_done == 10 < pack.batches.batches


@pytest.mark.slow
def test_a_fresh_packed_sweep_into_an_earlier_sweeps_job_folders_is_refused(tmp_path, synthetic_data_dir):
    """The dir of a finished sweep whose multirun.yaml is gone: at e2720c3 the new sweep adopted
    the old job as its own (a unit that "ran before") and printed its stale record."""
    sweep_dir = tmp_path / "sweep"
    command = ["mnist_lab.train", "-m", *QUICK, "trainer.max_epochs=1", "seed=1", f"hydra.sweep.dir={sweep_dir}"]
    run_cli(*command, cwd=tmp_path, data_dir=synthetic_data_dir)
    (sweep_dir / "multirun.yaml").unlink()
    before = {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()}
    result = run_cli(*command, cwd=tmp_path, data_dir=synthetic_data_dir, check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {sweep_dir} holds job folders of an earlier sweep (0_seed=1,trainer.max_epochs=1 holds a run) "
        "but no multirun.yaml; give this sweep its own hydra.sweep.dir, or add ckpt_path=last to resume those jobs."
    )
    assert {path: path.read_bytes() for path in sweep_dir.rglob("*") if path.is_file()} == before


def test_a_pack_that_cannot_resume_its_jobs_says_so(tmp_path, synthetic_data_dir, monkeypatch):
    """Each job then resumes alone, told why; at 065fe68 a failure in ``Pack.resume`` was told as
    "the pack could not be built"."""
    from omegaconf import OmegaConf

    from mnist_lab.packed.launch import PackedLaunch
    from mnist_lab.packed.pack import Pack
    from mnist_lab.packed.units import Unit

    def resume(self, checkpoints):
        raise RuntimeError("size mismatch for 0.weight")

    told = {}
    monkeypatch.setattr(Pack, "resume", resume)
    monkeypatch.setattr(PackedLaunch, "each_alone", lambda self, unit, reason: told.update(reason=reason))
    settings = [*BASE, f"data.data_dir={synthetic_data_dir}", "ckpt_path=last"]
    tasks = [compose_train(*settings, f"seed={seed}") for seed in (1, 2)]
    configs = [OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path), "subdir": str(k)}}}) for k in (0, 1)]
    PackedLaunch(2, None, None, None)._run(Unit([0, 1], configs, tasks, resume=True))
    assert told["reason"] == "the pack could not resume its jobs' last.ckpt (RuntimeError: size mismatch for 0.weight)"
