"""The seed-replicated sweep report and ``report.load`` on hand-made job folders: every number
is checked against one computed here by hand with numpy (the t quantiles from a printed table)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mnist_lab.analysis import summary as report
from tests.conftest import compose_train

# Two-sided 95 % quantiles of Student's t (any statistics table): df 2 and df 3.
T_975 = {2: 4.302652729911275, 3: 3.182446305284263}

# best_val_acc per seed of three learning rates: 0.001 and 0.01 overlap, 0.1 is far below.
VAL = {0.001: [0.971, 0.975, 0.973], 0.01: [0.969, 0.976, 0.970], 0.1: [0.35, 0.41, 0.38, 0.36]}


def make_job(sweep: Path, number: int, lr: float, seed: int, val: float, hidden=(128,)) -> None:
    job = sweep / f"{number}_optimizer.lr={lr},seed={seed}"
    job.mkdir(parents=True)
    hidden_text = "[" + ",".join(str(h) for h in hidden) + "]"
    metrics = {
        "status": "ok",
        "best_val_acc": val,
        "test_acc": val + 0.002,
        "final_train_loss": 1 - val,
        "epochs": 2,
        "train_time_s": 10.0 + seed,
        "val_acc": [val - 0.01, val],
        "overrides": [f"optimizer.lr={lr}", f"model.hidden={hidden_text}", f"seed={seed}"],
    }
    (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def seeded_sweep(tmp_path) -> Path:
    number = 0
    for lr, values in VAL.items():
        for seed, val in enumerate(values):
            make_job(tmp_path, number, lr, seed, val)
            number += 1
    return tmp_path


def by_hand(values: list[float]) -> tuple[float, float, float, float]:
    x = np.array(values)
    n, mean = len(x), x.sum() / len(x)
    std = np.sqrt(((x - mean) ** 2).sum() / (n - 1))
    half = T_975[n - 1] * std / np.sqrt(n)
    return mean, std, mean - half, mean + half


def welch_by_hand(a: list[float], b: list[float]) -> float:
    a, b = np.array(a), np.array(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    t = (a.mean() - b.mean()) / np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    return 2 * stats.t.sf(abs(t), df)  # only the t distribution's tail comes from scipy


def test_a_point_is_the_jobs_that_differ_only_in_the_seed(seeded_sweep):
    report.write_report(seeded_sweep, show=False)
    with open(seeded_sweep / "summary.csv", newline="") as f:
        points = {row["point"]: row for row in csv.DictReader(f)}
    assert len(points) == 3
    for lr, values in VAL.items():
        row = points[f"optimizer.lr={lr} model.hidden=[128]"]
        assert int(row["n"]) == len(values) and row["status"] == f"{len(values)} ok"
        mean, std, low, high = by_hand(values)
        got = [float(row[f"best_val_acc_{k}"]) for k in ("mean", "std", "ci_low", "ci_high")]
        assert got == pytest.approx([mean, std, low, high], rel=1e-9)
        assert float(row["test_acc_mean"]) == pytest.approx(mean + 0.002)
        assert float(row["final_train_loss_mean"]) == pytest.approx(1 - mean)
        assert float(row["train_time_s_mean"]) == pytest.approx(10 + (len(values) - 1) / 2)


def test_the_report_says_which_points_are_indistinguishable_from_the_best(seeded_sweep):
    report.write_report(seeded_sweep, show=False)
    with open(seeded_sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["point"].split()[0] for r in rows] == [
        "optimizer.lr=0.001",
        "optimizer.lr=0.01",
        "optimizer.lr=0.1",
    ]  # best mean first
    p_01 = welch_by_hand(VAL[0.001], VAL[0.01])
    p_1 = welch_by_hand(VAL[0.001], VAL[0.1])
    assert float(rows[1]["p_vs_best"]) == pytest.approx(p_01, rel=1e-9) and p_01 >= 0.05
    assert float(rows[2]["p_vs_best"]) == pytest.approx(p_1, rel=1e-9) and p_1 < 0.05
    assert [r["indistinguishable_from_best"] for r in rows] == ["True", "True", "False"]
    summary = (seeded_sweep / "summary.md").read_text()
    assert "Welch" in summary and "p >= 0.05" in summary
    assert "Indistinguishable from the best" in summary
    assert (
        summary.split("Indistinguishable from the best")[1]
        .split("\n")[0]
        .endswith("optimizer.lr=0.001, optimizer.lr=0.01.")
    )
    for png in ("curves.png", "time.png"):
        assert (seeded_sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_single_seed_sweep_keeps_the_per_job_report(tmp_path):
    for number, lr in enumerate(VAL):
        make_job(tmp_path, number, lr, 0, VAL[lr][0])
    report.write_report(tmp_path, show=False)
    with open(tmp_path / "summary.csv", newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == report.COLUMNS and len(list(reader)) == 3


def test_load_gives_one_typed_row_per_job(seeded_sweep):
    make_job(seeded_sweep, 10, 0.5, 0, 0.5, hidden=(64, 32))
    jobs = report.load(seeded_sweep)
    assert len(jobs) == 11 and jobs["optimizer.lr"].dtype == np.float64
    assert jobs["seed"].dtype == np.int64
    assert set(jobs["model.hidden"]) == {(128,), (64, 32)}
    means = jobs.groupby("optimizer.lr")["best_val_acc"].mean()
    assert means[0.1] == pytest.approx(np.mean(VAL[0.1]))
    assert jobs.loc[jobs["optimizer.lr"] == 0.5, "val_acc"].item() == [0.49, 0.5]


def test_a_seed_changes_the_batch_order_but_not_the_split():
    cfg = compose_train("seed=3")
    assert cfg.data.shuffle_seed == 3 and cfg.data.split_seed == 0


def test_a_resumed_job_that_rewrote_its_steps_counts_each_step_once(tmp_path):
    """A run resumed from an earlier epoch writes the steps it redid again: the report (and its
    mean curve over seeds) takes the last value of each step."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "tensorboard")
    for step, value in [(1, 2.0), (2, 1.5), (3, 1.2), (2, 1.4), (3, 1.1), (4, 0.9)]:
        writer.add_scalar("train/loss", value, step)
    writer.close()
    steps, losses = report.step_losses(tmp_path)
    assert steps == [1, 2, 3, 4] and losses == pytest.approx([2.0, 1.4, 1.1, 0.9])
