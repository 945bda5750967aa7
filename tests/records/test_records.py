"""Nothing finished is lost: a finished run's record, checkpoints and ``.hydra/`` survive every
refused, failed or mistyped command; a moved run dir resumes; the resume command round-trips.

The commands on one finished run are forked from one runner process (tests/test_reliability.py
``run_forked``), in order, each as ``python -m mnist_lab.train`` runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import QUICK, read_metrics, run_cli
from tests.test_reliability import run_forked

TINY = [*QUICK, "trainer.max_epochs=1", "trainer.limit_train_batches=5"]


def fork_commands(commands: list[list[str]], cwd: Path, data_dir: Path) -> list[dict]:
    """Run each argument list as ``python -m mnist_lab.train``, one after the other."""
    cases = []
    for i, args in enumerate(commands):
        cases.append(
            {
                "args": args,
                "cwd": str(cwd),
                "env": {"MNIST_LAB_DATA_DIR": str(data_dir)},
                "stdout": str(cwd / f"{i}.out"),
                "stderr": str(cwd / f"{i}.err"),
            }
        )
    return run_forked(cases, cwd)


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run dir that says what the run was: record, config, checkpoints."""
    files = [
        run_dir / "metrics.json",
        *sorted((run_dir / ".hydra").iterdir()),
        *sorted((run_dir / "checkpoints").iterdir()),
    ]
    return {str(f.relative_to(run_dir)): f.read_bytes() for f in files}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, synthetic_data_dir) -> Path:
    """A finished MLP run (one epoch of 5 batches)."""
    cwd = tmp_path_factory.mktemp("finished")
    run_cli("mnist_lab.train", *TINY, f"hydra.run.dir={cwd / 'run'}", cwd=cwd, data_dir=synthetic_data_dir)
    assert read_metrics(cwd / "run")["status"] == "ok"
    return cwd / "run"


@pytest.mark.slow
def test_refused_and_failed_commands_leave_a_finished_run_as_it_was(finished_run, tmp_path, synthetic_data_dir):
    before = snapshot(finished_run)
    assert set(before) >= {".hydra/config.yaml", ".hydra/overrides.yaml", "checkpoints/best.ckpt"}
    (tmp_path / "a_file").write_text("not a folder")
    run = f"hydra.run.dir={finished_run}"
    commands = {
        "a resume whose check fails": [*TINY, run, "optimizer.lr=-1", "ckpt_path=last"],
        "a resume with a data dir that cannot work": [
            *TINY,
            run,
            f"data.data_dir={tmp_path}/a_file/x",
            "ckpt_path=last",
        ],
        "a resume with another model": [*TINY, run, "model=cnn", "ckpt_path=last"],
        "a new run into the finished run's dir": [*TINY, run, "model=cnn", "optimizer=sgd", "optimizer.lr=0.5"],
        "a mistyped key": [*TINY, run, "optimizer.lrr=0.1", "ckpt_path=last"],
    }
    results = fork_commands(list(commands.values()), tmp_path, synthetic_data_dir)
    for what, result in zip(commands, results, strict=True):
        assert result["code"] == 1, (what, result["stderr"][-2000:])
        assert result["stderr"].strip().splitlines()[-1].startswith("error: "), what
        assert snapshot(finished_run) == before, f"{what} changed the finished run's files"
    assert read_metrics(finished_run)["status"] == "ok"


@contextlib.contextmanager
def moved_away(path: Path):
    """``path`` is gone for the duration of the block (then put back for the other tests)."""
    hidden = path.with_name(path.name + ".away")
    path.rename(hidden)
    try:
        yield
    finally:
        hidden.rename(path)


@pytest.mark.slow
def test_a_moved_run_dir_resumes_and_tests_its_own_best_checkpoint(finished_run, tmp_path, synthetic_data_dir):
    """Checkpoints hold absolute paths (ModelCheckpoint's best_model_path): a run dir copied
    elsewhere, its original gone, resumes and tests the best.ckpt in its own folder."""
    moved = shutil.copytree(finished_run, tmp_path / "moved")
    with moved_away(finished_run / "checkpoints" / "best.ckpt"):  # as if the original had moved
        result = run_cli(
            "mnist_lab.train",
            *TINY,
            f"hydra.run.dir={moved}",
            "ckpt_path=last",
            cwd=tmp_path,
            data_dir=synthetic_data_dir,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(moved)
    assert metrics["status"] == "ok"
    assert metrics["test_acc"] == read_metrics(finished_run)["test_acc"]  # its own best.ckpt: the same weights


@pytest.mark.slow
def test_resuming_from_another_runs_checkpoint_does_not_test_that_runs_best(finished_run, tmp_path, synthetic_data_dir):
    """The other run's best.ckpt is never loaded (here it is gone: loading it would fail)."""
    new_run = tmp_path / "new"
    with moved_away(finished_run / "checkpoints" / "best.ckpt"):
        result = run_cli(
            "mnist_lab.train",
            *TINY,
            f"hydra.run.dir={new_run}",
            f"ckpt_path={finished_run}/checkpoints/last.ckpt",
            cwd=tmp_path,
            data_dir=synthetic_data_dir,
            check=False,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_metrics(new_run)
    assert metrics["status"] == "ok" and metrics["test_acc"] is not None


@pytest.mark.parametrize(
    "run_dir",
    [
        "out/run 1",
        "runs/ü",
        "runs/a(1)",
        "runs/lr=0.1,bs=64",
        "~/runs",
        "runs/#3",
        "runs/a&b",
        "runs/it's",
        'runs/"q" $HOME \\x',
        "null",
    ],
)
def test_the_resume_command_gives_hydra_the_run_dir_back(run_dir):
    """What the shell makes of the printed command, Hydra parses back into the same run dir."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from mnist_lab.train import resume_command

    words = shlex.split(resume_command(["model.hidden=[64,32]", "ckpt_path=last"], Path(run_dir)))
    assert words[:4] == ["python", "-m", "mnist_lab.train", "model.hidden=[64,32]"]
    assert words[-1] == "ckpt_path=last"
    parsed = OverridesParser.create().parse_override(words[-2])
    assert parsed.key_or_group == "hydra.run.dir" and parsed.value() == run_dir


SWEEP = ["-m", "optimizer.lr=0.01,0.1", "hydra.sweep.dir=sweep", *TINY]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory, synthetic_data_dir) -> Path:
    cwd = tmp_path_factory.mktemp("sweep")
    run_cli("mnist_lab.train", *SWEEP, cwd=cwd, data_dir=synthetic_data_dir)
    return cwd / "sweep"


def sweep_files(sweep: Path) -> dict[str, bytes]:
    jobs = [str(p.relative_to(sweep)) for p in sweep.glob("*/metrics.json")]
    names = ["multirun.yaml", "summary.csv", "summary.md", *jobs]
    return {name: (sweep / name).read_bytes() for name in names}


@pytest.mark.slow
def test_a_sweep_resumed_with_a_bad_data_dir_keeps_its_finished_jobs(finished_sweep, synthetic_data_dir):
    before = sweep_files(finished_sweep)
    (finished_sweep.parent / "a_file").write_text("not a folder")
    result = run_cli(
        "mnist_lab.train",
        *SWEEP,
        "ckpt_path=last",
        f"data.data_dir={finished_sweep.parent}/a_file/x",
        cwd=finished_sweep.parent,
        data_dir=synthetic_data_dir,
    )
    assert "sweep: 2 jobs, 2 ok" in result.stdout
    after = sweep_files(finished_sweep)
    assert {k: v for k, v in after.items() if k.endswith("metrics.json")} == {
        k: v for k, v in before.items() if k.endswith("metrics.json")
    }


@pytest.mark.slow
def test_a_second_sweep_into_a_sweep_dir_is_refused_before_it_writes(finished_sweep, synthetic_data_dir):
    before = sweep_files(finished_sweep)
    result = run_cli(
        "mnist_lab.train",
        "-m",
        "optimizer.lr=0.5",
        "hydra.sweep.dir=sweep",
        *TINY,
        cwd=finished_sweep.parent,
        data_dir=synthetic_data_dir,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: sweep already holds a sweep (its multirun.yaml); add ckpt_path=last to resume it, "
        "or give this sweep its own hydra.sweep.dir."
    )
    assert sweep_files(finished_sweep) == before
    assert len(list(finished_sweep.glob("*/metrics.json"))) == 2


@pytest.mark.slow
@pytest.mark.parametrize("module, args", [("mnist_lab.train", TINY), ("mnist_lab.evaluate", ["ckpt_path=x"])])
def test_ctrl_c_while_a_command_starts_is_one_line(tmp_path, synthetic_data_dir, module, args):
    """Ctrl-C while torch and Lightning load (seconds) or Hydra composes: one line, exit 130.
    The signal goes once the command has imported ``quiet_interrupt`` (its first import), which
    ``-X importtime`` tells on stderr, not after a fixed wait that a busy machine can outrun."""
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", module, *args],
        cwd=tmp_path,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    for line in process.stderr:  # until the module has been imported (or the command ended)
        if line.rstrip().endswith("| mnist_lab.cli.quiet_interrupt"):
            break
    process.send_signal(signal.SIGINT)  # inside the imports that follow (torch, Lightning: seconds)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode in (130, -signal.SIGINT), stderr[-2000:]
    lines = [line for line in stderr.strip().splitlines() if not line.startswith("import time:")]
    assert lines == ["interrupted (Ctrl-C); nothing was written."]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_a_checkpoint_from_the_cuda_graph_path_resumes_on_the_cpu(finished_run, tmp_path, synthetic_data_dir):
    """The graph path's optimizer state: capturable=True, the lr and step counters as tensors
    (what such a checkpoint holds, written here on the CPU). Eager Adam refused it."""
    import torch

    run_dir = shutil.copytree(finished_run, tmp_path / "run")
    last = run_dir / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    for optimizer in checkpoint["optimizer_states"]:
        for group in optimizer["param_groups"]:
            group.update(capturable=True, fused=None, lr=torch.tensor(group["lr"]))
        for state in optimizer["state"].values():
            state["step"] = torch.tensor(float(state["step"]))
    torch.save(checkpoint, last)
    run_cli(
        "mnist_lab.train",
        *TINY,
        "trainer.max_epochs=2",
        f"hydra.run.dir={run_dir}",
        "ckpt_path=last",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    metrics = read_metrics(run_dir)
    assert metrics["status"] == "ok" and metrics["epochs"] == 2


@pytest.mark.slow
def test_a_run_refused_while_another_runs_in_the_dir_leaves_its_config(tmp_path, synthetic_data_dir):
    """Two runs into one dir: the one that claimed it keeps its .hydra/ (Hydra used to write
    the refused one's config over it, before the refusal)."""
    from omegaconf import OmegaConf

    run_dir = tmp_path / "run"
    first = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mnist_lab.train",
            *QUICK,
            "trainer.max_epochs=1000",
            "seed=1",
            f"hydra.run.dir={run_dir}",
        ],
        cwd=tmp_path,
        text=True,
        env={**os.environ, "MNIST_LAB_DATA_DIR": str(synthetic_data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "last.ckpt").exists() and first.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        second = run_cli(
            "mnist_lab.train",
            *QUICK,
            "seed=2",
            f"hydra.run.dir={run_dir}",
            cwd=tmp_path,
            data_dir=synthetic_data_dir,
            check=False,
        )
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert second.returncode == 1 and "already holds a run (status running)" in second.stderr
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").seed == 1
    assert "seed=1" in OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    assert read_metrics(run_dir)["status"] == "interrupted"


def test_a_resume_stopped_or_failing_before_it_trains_leaves_the_record_on_disk(tmp_path):
    """What the command prints and exits with says interrupted or failed; the file keeps the
    finished run's record."""
    from mnist_lab.cli.exit_codes import Terminated
    from mnist_lab.records.run_record import RunRecord

    finished = {"status": "ok", "test_acc": 0.98, "run_dir": str(tmp_path)}
    (tmp_path / "metrics.json").write_text(json.dumps(finished))
    for stop in (lambda r: r.interrupt(Terminated()), lambda r: r.fail(ValueError("bad data_dir"))):
        record = RunRecord(tmp_path, ["ckpt_path=last"], {})
        record.adopt()
        stop(record)
        assert record.data["status"] in ("interrupted", "failed")
        assert json.loads((tmp_path / "metrics.json").read_text()) == finished
