"""``hydra/launcher=packed``: the same sweep run with the basic and the packed launcher leaves the
same job folders, records, report rows, TensorBoard curves and usable checkpoints."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mnist_lab.analysis import summary as report
from mnist_lab.cli import sweep_clock
from tests.conftest import QUICK, read_metrics, run_cli, sweep_parts
from tests.float_tolerance import assert_losses_close
from tests.test_evaluate_predict import predictions

pytestmark = pytest.mark.slow

# Three jobs (2,500 training images at batch 64: 40 steps an epoch), learning slowly enough that
# their numbers differ, with dropout (a packed job draws its solo run's masks); with
# hydra.launcher.pack_size=2 the first two train as a pack and the third, a pack's remainder of
# one, alone through the normal path.
GRID = ["optimizer.lr=0.00001,0.00002,0.00003", "model.dropout=0.2"]
JOBS = [f"{i}_model.dropout=0.2,optimizer.lr={lr}" for i, lr in enumerate(("1e-05", "2e-05", "3e-05"))]  # folders
STEPS = 80
HISTORY = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
SAME = ("status", "best_val_acc", "test_acc", "final_train_loss", "epochs", "diverged_at_step", "error")


def sweep(tmp_path, data_dir, name: str, *launcher: str) -> tuple:
    sweep_dir = tmp_path / name
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *QUICK,
        *GRID,
        *launcher,
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        data_dir=data_dir,
    )
    return sweep_dir, result.stdout + result.stderr


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, synthetic_data_dir):
    tmp_path = tmp_path_factory.mktemp("packed_launcher")
    basic, _ = sweep(tmp_path, synthetic_data_dir, "basic", "hydra/launcher=basic")  # Hydra's own: one job at a time
    packed, output = sweep(
        tmp_path, synthetic_data_dir, "packed", "hydra/launcher=packed", "hydra.launcher.pack_size=2"
    )
    return basic, packed, output


def assert_same_record(ours: dict, theirs: dict, job: str) -> None:
    """Two jobs' metrics.json: the same values (floats to 1e-4) and per-epoch history."""
    for key in SAME:
        expected = theirs.get(key)
        assert ours.get(key) == (pytest.approx(expected, rel=1e-4) if isinstance(expected, float) else expected), (
            job,
            key,
        )
    for key in HISTORY:
        assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (job, key)


def test_two_jobs_train_as_a_pack_and_the_remainder_alone(sweeps):
    _, packed, output = sweeps
    assert "Launching 3 jobs locally: 2 in 1 packs, 1 alone" in output
    assert output.count("(packed: 2 jobs)") == 2
    assert "sweep: 3 jobs, 3 ok, 0 diverged, 0 failed" in output
    for job in JOBS[:2]:  # packed checkpoints say so
        assert torch.load(packed / job / "checkpoints" / "last.ckpt", weights_only=True)["packed"] == 2
        assert read_metrics(packed / job)["packed"] == 2, "its train_time_s is its pack's: the record says so"
        assert read_metrics(packed / job)["packed_epochs"] == 2, "both of its epochs trained in the pack"
    assert "packed" not in torch.load(packed / JOBS[2] / "checkpoints" / "last.ckpt", weights_only=True)
    assert "packed" not in read_metrics(packed / JOBS[2])


def test_a_packed_jobs_train_time_is_its_packs_and_its_bookkeeping_is_timed_apart(sweeps):
    _, packed, _ = sweeps
    first, second = (read_metrics(packed / job) for job in JOBS[:2])
    assert first["train_time_s"] == second["train_time_s"], "the pack's time, whatever the job's place in it"
    assert first["train_time_s"] > sum(first["epoch_time_s"])  # its training epochs and their validation
    assert first["bookkeeping_s"] > 0 and second["bookkeeping_s"] > 0
    assert "bookkeeping_s" not in read_metrics(packed / JOBS[2]), "a job alone: its Lightning run, as ever"


def test_the_sweeps_last_line_says_where_the_time_went(sweeps):
    output = sweeps[2]
    line = re.search(r"sweep: 3 jobs, 3 ok, 0 diverged, 0 failed in ([\d.]+) s \((.*)\); report in", output)
    assert line, output[-2000:]
    parts = sweep_parts(line[2])
    named = ["start-up", "configs", "training", "evaluation", "records and images", "report"]  # no probe: pack_size=2
    assert [p for p in parts if p not in sweep_clock.OPTIONAL][: len(named)] == named, parts  # those: from 0.1 s
    assert set(parts) <= {*named, *sweep_clock.OPTIONAL, "other"}, parts
    assert all(parts[name] >= 0 for name in named)  # each part named, even where it rounds to 0.0 s
    assert sum(parts.values()) == pytest.approx(float(line[1]), abs=0.1 * len(parts))  # each rounded to 0.1 s


def test_packed_jobs_give_the_basic_sweeps_folders_records_and_report_rows(sweeps):
    basic, packed, _ = sweeps
    basic_rows, packed_rows = report.load(basic), report.load(packed)
    assert list(packed_rows.columns) == list(basic_rows.columns)
    assert list(packed_rows["job"]) == list(basic_rows["job"]) and len(basic_rows) == 3
    assert (packed / "summary.csv").is_file() and (packed / "curves.png").is_file()
    for job in basic_rows["job"]:
        ours, theirs = read_metrics(packed / job), read_metrics(basic / job)
        assert theirs["status"] == "ok" and theirs["test_acc"] < 1, "the jobs should still be learning"
        assert_same_record(ours, theirs, job)
        assert ours["overrides"] == theirs["overrides"] and ours["run_dir"] == str(packed / job)
        for name in ("config.yaml", "overrides.yaml"):
            assert yaml.safe_load((packed / job / ".hydra" / name).read_text()) == yaml.safe_load(
                (basic / job / ".hydra" / name).read_text()
            )
        hydra_yaml = yaml.safe_load((packed / job / ".hydra" / "hydra.yaml").read_text())
        assert hydra_yaml["hydra"]["runtime"]["output_dir"] == str(packed / job)


def scalars(job_dir) -> dict[str, list[tuple[int, float]]]:
    events = EventAccumulator(str(job_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_packed_jobs_write_the_solo_runs_tensorboard_scalars(sweeps):
    basic, packed, _ = sweeps
    job = JOBS[1]
    ours, theirs = scalars(packed / job), scalars(basic / job)
    assert set(ours) == set(theirs)
    assert [s for s, _ in ours["train/loss"]] == list(range(1, STEPS + 1))
    packed_losses, solo_losses = (torch.tensor([v for _, v in tags["train/loss"]]) for tags in (ours, theirs))
    assert_losses_close(packed_losses, solo_losses)
    for tag in ("val/acc", "val/loss", "train/acc", "train/loss_epoch", "lr", "test/acc", "test/loss"):
        assert [s for s, _ in ours[tag]] == [s for s, _ in theirs[tag]], tag
        assert [v for _, v in ours[tag]] == pytest.approx([v for _, v in theirs[tag]], rel=1e-4), tag
    steps, losses = report.step_losses(packed / job)
    assert steps == list(range(1, STEPS + 1)) and len(report.load_steps(packed / job)) == STEPS


def images(job_dir) -> dict[str, list[tuple[int, bytes]]]:
    events = EventAccumulator(str(job_dir / "tensorboard"), size_guidance={"images": 0}).Reload()
    return {tag: [(e.step, e.encoded_image_string) for e in events.Images(tag)] for tag in events.Tags()["images"]}


def test_packed_jobs_write_the_solo_runs_tensorboard_images(sweeps):
    basic, packed, _ = sweeps
    job = JOBS[1]
    ours, theirs = images(packed / job), images(basic / job)
    assert set(ours) == set(theirs) == {"train/samples", "val/misclassified", "test/confusion_matrix"}
    for tag in theirs:
        assert [step for step, _ in ours[tag]] == [step for step, _ in theirs[tag]], tag
    assert ours["train/samples"] == theirs["train/samples"]  # the same digits, pixel for pixel


def test_packed_checkpoints_are_solo_checkpoints_that_evaluate_and_predict_load(sweeps, tmp_path, synthetic_data_dir):
    basic, packed, _ = sweeps
    job = JOBS[0]
    for name in ("best.ckpt", "last.ckpt"):
        ours = torch.load(packed / job / "checkpoints" / name, weights_only=True)
        theirs = torch.load(basic / job / "checkpoints" / name, weights_only=True)
        assert (ours["epoch"], ours["global_step"]) == (theirs["epoch"], theirs["global_step"])
        assert ours["hyper_parameters"]["config"]["optimizer"] == theirs["hyper_parameters"]["config"]["optimizer"]
        assert ours["state_dict"].keys() == theirs["state_dict"].keys()
        for key, value in theirs["state_dict"].items():
            if key.startswith("net."):
                torch.testing.assert_close(ours["state_dict"][key], value, rtol=1e-4, atol=1e-5)
    result = run_cli("mnist_lab.evaluate", f"ckpt_path='{packed / job}'", cwd=tmp_path, data_dir=synthetic_data_dir)
    assert f"test/acc {read_metrics(packed / job)['test_acc']:.4f}" in result.stdout
    digit = torch.zeros(28, 28, dtype=torch.uint8)
    digit[8:20, 12:16] = 255
    from PIL import Image

    Image.fromarray(digit.numpy()).save(tmp_path / "digit.png")
    result = run_cli("mnist_lab.predict", f"ckpt_path='{packed / job}'", "images=digit.png", cwd=tmp_path)
    assert result.stdout.startswith("digit.png")


def write_block_digits(directory) -> None:
    """Six images like the synthetic digits (conftest.synthetic_arrays), each with two of the ten
    classes' blocks, so that predict's crop and centring leave them different."""
    from PIL import Image

    directory.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        image = rng.integers(0, 60, (28, 28)).astype(np.uint8)
        for c in rng.choice(10, 2, replace=False):
            row, col = divmod(int(c), 5)
            image[2 + row * 12 : 9 + row * 12, 2 + col * 5 : 7 + col * 5] += 180
        Image.fromarray(image).save(directory / f"blocks_{i}.png")


def predict(tmp_path, checkpoints) -> list[dict[str, list[tuple[int, float]]]]:
    """``predict``'s digit and ten probabilities for each of ``digits/*.png`` with each checkpoint,
    run as a user runs it; two runs at a time (each is mostly its imports)."""

    def run(checkpoint) -> dict[str, list[tuple[int, float]]]:
        args = (f"ckpt_path='{checkpoint}'", "images=digits/*.png", "top=10")
        return predictions(run_cli("mnist_lab.predict", *args, cwd=tmp_path).stdout)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(run, checkpoints))


# `python -m mnist_lab.train ...` that kills itself with SIGKILL (kill -9) once packed jobs have
# ended KILL_AFTER epochs between them (their checkpoints and records written).
KILLED_IN_A_PACK = """
import os, runpy, signal, sys
from mnist_lab.packed.job import PackedJob

end_epoch, ended = PackedJob.end_epoch, []

def end_epoch_then_kill(self, *args):
    end_epoch(self, *args)
    ended.append(self.index)
    if len(ended) == int(os.environ["KILL_AFTER"]):
        os.kill(os.getpid(), signal.SIGKILL)

PackedJob.end_epoch = end_epoch_then_kill
sys.argv[0] = "mnist_lab.train"
runpy.run_module("mnist_lab.train", run_name="__main__", alter_sys=True)
"""


def test_a_packed_sweep_killed_after_epoch_1_resumes_to_the_uninterrupted_sweeps_results(
    sweeps, tmp_path, synthetic_data_dir
):
    basic, packed, _ = sweeps
    sweep_dir = tmp_path / "killed"
    args = ["-m", *QUICK, *GRID, "hydra/launcher=packed", "hydra.launcher.pack_size=2", f"hydra.sweep.dir={sweep_dir}"]
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_IN_A_PACK, *args],
        cwd=tmp_path,
        env={**os.environ, "MNIST_LAB_DATA_DIR": str(synthetic_data_dir), "KILL_AFTER": "2"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    for job in JOBS[:2]:  # the pack's two jobs, at the end of their first epoch of two
        assert read_metrics(sweep_dir / job)["epochs"] == 1
        last = torch.load(sweep_dir / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert last["packed"] == 2 and (last["epoch"], last["global_step"]) == (0, STEPS // 2)
        assert last["optimizer_states"][0]["state"] and last["loops"]["fit_loop"]["epoch_progress"]
    assert not (sweep_dir / JOBS[2]).exists()

    alone = tmp_path / "killed_resumed_alone"  # the same killed sweep, its pack's jobs resumed alone
    shutil.copytree(sweep_dir, alone)
    resumed = run_cli("mnist_lab.train", *args, "ckpt_path=last", cwd=tmp_path, data_dir=synthetic_data_dir)
    output = resumed.stdout + resumed.stderr
    assert "Launching 3 jobs locally: 2 in 1 packs, 1 alone" in output  # the two resumed jobs, packed again
    assert output.count("(packed: 2 jobs, resuming after 1 of 2 epochs)") == 2
    for job in JOBS[:2]:  # both epochs trained in a pack: the record and last.ckpt say so
        record = read_metrics(sweep_dir / job)
        last = torch.load(sweep_dir / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert (record["epochs"], record.get("packed"), record.get("packed_epochs")) == (2, 2, 2), job
        assert (last["epoch"], last.get("packed"), last.get("packed_epochs")) == (1, 2, 2), job
    assert "packed" not in read_metrics(sweep_dir / JOBS[2]) and "packed_epochs" not in read_metrics(
        sweep_dir / JOBS[2]
    )
    for job in JOBS:
        ours, theirs = read_metrics(sweep_dir / job), read_metrics(packed / job)
        assert_same_record(ours, theirs, job)
        for key in HISTORY:
            assert ours[key] == pytest.approx(theirs[key], rel=1e-5), (job, key)
        losses = report.step_losses(sweep_dir / job)
        assert losses[0] == list(range(1, STEPS + 1))
        for uninterrupted in (packed, basic):  # the packed sweep, and each job's solo run
            reference = torch.tensor(report.step_losses(uninterrupted / job)[1])
            assert_losses_close(torch.tensor(losses[1]), reference, what=job)
    for job in JOBS[:2]:  # written by the resumed pack: the uninterrupted pack's weights and state
        assert read_metrics(sweep_dir / job)["packed"] == 2
        for name in ("best.ckpt", "last.ckpt"):
            ours = torch.load(sweep_dir / job / "checkpoints" / name, weights_only=True)
            theirs = torch.load(packed / job / "checkpoints" / name, weights_only=True)
            assert ours["packed"] == 2 and ours["epoch"] == theirs["epoch"]
            assert ours["global_step"] == theirs["global_step"]
            weights = [{k: v for k, v in c["state_dict"].items() if k.startswith("net.")} for c in (ours, theirs)]
            torch.testing.assert_close(*weights, rtol=1e-5, atol=1e-7)
            torch.testing.assert_close(ours["optimizer_states"], theirs["optimizer_states"], rtol=1e-5, atol=1e-7)
            assert ours["lr_schedulers"] == theirs["lr_schedulers"]
            best = [next(iter(c["callbacks"].values()))["best_model_score"] for c in (ours, theirs)]
            torch.testing.assert_close(*best, rtol=1e-5, atol=0)
    job = sweep_dir / JOBS[0]
    result = run_cli("mnist_lab.evaluate", f"ckpt_path='{job}'", cwd=tmp_path, data_dir=synthetic_data_dir)
    assert f"test/acc {read_metrics(job)['test_acc']:.4f}" in result.stdout
    # predict, as a user runs it, on the resumed pack's second job: its run dir (best.ckpt) and
    # last.ckpt give the uninterrupted pack's digit and all ten probabilities for each image
    write_block_digits(tmp_path / "digits")
    checkpoints = [JOBS[1], f"{JOBS[1]}/checkpoints/last.ckpt"]
    found = predict(tmp_path, [run / c for run in (sweep_dir, packed) for c in checkpoints])
    for checkpoint, resumed, uninterrupted in zip(checkpoints, found[:2], found[2:], strict=True):
        assert sorted(resumed) == sorted(uninterrupted) == [f"digits/blocks_{i}.png" for i in range(6)], checkpoint
        for image, ranked in uninterrupted.items():
            assert resumed[image][0][0] == ranked[0][0], (checkpoint, image)  # the predicted digit
            # each probability as printed (to 0.1 %): one rounding step apart at most
            assert dict(resumed[image]) == pytest.approx(dict(ranked), abs=0.0015), (checkpoint, image)

    # pack_size=1 (no packing): the pack's two jobs resume alone, from the same packed last.ckpt (the
    # same grid: a resume runs the sweep its dir holds, records.sweep_dir; job 2 starts afresh)
    args_alone = ["-m", *QUICK, *GRID, "hydra/launcher=packed"]
    args_alone += ["hydra.launcher.pack_size=1", f"hydra.sweep.dir={alone}", "ckpt_path=last"]
    run_cli("mnist_lab.train", *args_alone, cwd=tmp_path, data_dir=synthetic_data_dir)
    for job in JOBS[:2]:  # its first epoch in the pack, its second alone: the record and last.ckpt say so
        record = read_metrics(alone / job)
        last = torch.load(alone / job / "checkpoints" / "last.ckpt", weights_only=True)
        assert (record["epochs"], record.get("packed"), record.get("packed_epochs")) == (2, 2, 1), job
        assert (last["epoch"], last.get("packed"), last.get("packed_epochs")) == (1, 2, 1), job
        assert_same_record(record, read_metrics(packed / job), job)


@pytest.mark.parametrize("stop, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["ctrl_c", "sigterm"])
def test_a_default_sweep_stopped_in_a_pack_records_its_jobs_as_interrupted(stop, code, tmp_path, synthetic_data_dir):
    """Ctrl-C or SIGTERM while a pack trains (a plain --multirun): as with the basic launcher,
    each running job is recorded as interrupted and printed, one line says how to resume, and the
    sweep exits 130 or 143 without a traceback."""
    sweep_dir = tmp_path / "stopped"
    args = ["-m", *QUICK, "trainer.max_epochs=50", "seed=1,2", "model=linear", f"hydra.sweep.dir={sweep_dir}"]
    args.append("hydra.launcher.pack_size=2")  # the pack this test stops, whatever auto would choose
    sweep = subprocess.Popen(
        [sys.executable, "-m", "mnist_lab.train", *args],
        cwd=tmp_path,
        env={**os.environ, "MNIST_LAB_DATA_DIR": str(synthetic_data_dir)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as from a terminal (test_resume.py)
    )
    while len(list(sweep_dir.glob("*/checkpoints/last.ckpt"))) < 2:  # the pack's first epoch is written
        assert sweep.poll() is None, sweep.communicate()[1][-3000:]
        time.sleep(0.05)
    sweep.send_signal(stop)
    stdout, stderr = sweep.communicate(timeout=120)
    assert sweep.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr
    assert stdout.count("(packed: 2 jobs)") == 2
    assert stdout.count("[interrupted] ") == 2
    assert stderr.strip().splitlines()[-1] == (
        "interrupted: 2 packed jobs recorded as interrupted; resume with: the same command, "
        f"hydra.sweep.dir={sweep_dir} ckpt_path=last"
    )
    records = [read_metrics(job) for job in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name[0] != ".")]
    assert [(r["status"], r["stopped_by"], r["packed"]) for r in records] == [("interrupted", stop.name, 2)] * 2


def test_a_finished_packed_sweep_resumed_is_left_as_it_was(sweeps, tmp_path, synthetic_data_dir):
    _, packed, _ = sweeps
    kept = [p for p in packed.rglob("*") if p.is_file() and (p.name == "metrics.json" or p.suffix == ".ckpt")]
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in kept}
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *QUICK,
        *GRID,
        "hydra/launcher=packed",
        "hydra.launcher.pack_size=2",
        f"hydra.sweep.dir={packed}",
        "ckpt_path=last",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in kept} == before
    assert result.stdout.count("(finished: left as it was)") == 3


def test_hydra_launcher_basic_packs_nothing(sweeps):
    basic, _, _ = sweeps
    for job in JOBS:
        assert "packed" not in read_metrics(basic / job)
        assert "packed" not in torch.load(basic / job / "checkpoints" / "last.ckpt", weights_only=True)


def test_the_default_pack_size_on_the_cpu_is_untimed_and_the_sweep_runs(tmp_path, synthetic_data_dir):
    sweep_dir = tmp_path / "sweep"
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *QUICK,
        "trainer.max_epochs=1",
        "data.batch_size=4",  # 625 steps a job, which e2720c3 probed
        "seed=1,2",
        "hydra/launcher=packed",
        f"hydra.sweep.dir={sweep_dir}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
    )
    output = result.stdout + result.stderr
    assert "pack size 2 for 2 jobs of train MLP [128]" in output
    assert "(on the CPU: up to 16 jobs a pack, for " in output
    assert "sweep: 2 jobs, 2 ok, 0 diverged, 0 failed" in output


def test_a_second_packed_sweep_into_the_sweep_dir_is_refused_before_it_writes(sweeps, tmp_path, synthetic_data_dir):
    _, packed, _ = sweeps
    before = {path: path.stat().st_mtime_ns for path in packed.rglob("*") if path.is_file()}
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *QUICK,
        "seed=5,6",
        "hydra/launcher=packed",
        f"hydra.sweep.dir={packed}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        check=False,
    )
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(
        f"error: {packed} already holds a sweep (its multirun.yaml)"
    )
    assert {path: path.stat().st_mtime_ns for path in packed.rglob("*") if path.is_file()} == before


def test_a_bad_pack_size_is_one_sentence(tmp_path, synthetic_data_dir):
    result = run_cli(
        "mnist_lab.train",
        "-m",
        *QUICK,
        "hydra/launcher=packed",
        "hydra.launcher.pack_size=0",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        cwd=tmp_path,
        data_dir=synthetic_data_dir,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "error: hydra.launcher.pack_size=0 must be auto or a whole number of at least 1."


@pytest.mark.parametrize("batch_size", [5, 64])
def test_a_packed_jobs_sample_grid_is_its_solo_runs_first_training_item(batch_size):
    from omegaconf import OmegaConf
    from torchvision.utils import make_grid

    from mnist_lab.data.datamodule import SAMPLES_PER_CALL, DeviceBatches
    from mnist_lab.packed.images import PackedImages
    from mnist_lab.tracking.tensorboard_images import GRID_COLUMNS, to_pixels

    x, y = torch.randn(200, 1, 28, 28), torch.randint(0, 10, (200,))
    solo = DeviceBatches(x, y, batch_size, shuffle=True, seed=3, group=max(1, SAMPLES_PER_CALL // batch_size))
    first, _ = next(iter(solo))  # what TensorBoardImages.on_train_start draws from
    written = {}

    class Writer:
        def add_image(self, tag, image, step):
            written[tag] = (image, step)

    images = PackedImages(OmegaConf.create({"max_images": 32}), Writer())
    images.samples(DeviceBatches(x, y, batch_size, shuffle=True, seed=3))  # the pack's loader: one batch an item
    grid, step = written["train/samples"]
    assert step == 0
    torch.testing.assert_close(grid, make_grid(to_pixels(first[:32]), nrow=GRID_COLUMNS, pad_value=1.0), rtol=0, atol=0)
