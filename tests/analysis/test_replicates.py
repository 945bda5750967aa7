"""The seed-replicated sweep report and ``report.load`` on hand-made job folders: every number
is checked against one computed here by hand with numpy (the t quantiles from a printed table or
scipy's t distribution, Holm's adjustment and the power of a t-test written out here)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from mnist_lab import report as report_command
from mnist_lab.analysis import summary as report
from tests.analysis.test_findings import power_by_hand
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


def welch_by_hand(a: list[float], b: list[float]) -> tuple[float, float, float, float]:
    """mean(a) - mean(b), its 95 % interval and the two-sided p, Welch–Satterthwaite df."""
    a, b = np.array(a), np.array(b)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    diff, se = a.mean() - b.mean(), np.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))  # Welch-Satterthwaite
    half = stats.t.ppf(0.975, df) * se  # only the t distribution comes from scipy
    return diff, diff - half, diff + half, 2 * stats.t.sf(abs(diff) / se, df)


def read_points(sweep: Path) -> list[dict]:
    with open(sweep / "summary.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_each_point_gets_its_difference_to_the_best_with_a_holm_p_and_a_verdict(seeded_sweep):
    report.write_report(seeded_sweep, show=False)
    rows = read_points(seeded_sweep)
    assert [r["point"].split()[0] for r in rows] == [
        "optimizer.lr=0.001",
        "optimizer.lr=0.01",
        "optimizer.lr=0.1",
    ]  # best mean val acc first
    d_01, low_01, high_01, p_01 = welch_by_hand(VAL[0.01], VAL[0.001])
    d_1, low_1, high_1, p_1 = welch_by_hand(VAL[0.1], VAL[0.001])
    assert p_1 < p_01  # Holm by hand: the smaller p times 2, the larger times 1 but never below it
    holm_1, holm_01 = min(1, 2 * p_1), max(min(1, 2 * p_1), p_01)
    for metric in ("best_val_acc", "test_acc"):  # test_acc is val + 0.002: the same differences
        got = [[float(r[f"{metric}_diff_to_best{k}"]) for k in ("", "_ci_low", "_ci_high")] for r in rows[1:]]
        assert got == [pytest.approx([d_01, low_01, high_01]), pytest.approx([d_1, low_1, high_1])]
        assert [float(r[f"{metric}_p_holm"]) for r in rows[1:]] == pytest.approx([holm_01, holm_1], rel=1e-9)
        assert [r[f"{metric}_vs_best"] for r in rows] == ["best", "not resolved by 3 seeds", "worse"]
    assert p_01 >= 0.05 and holm_1 < 0.001
    summary = (seeded_sweep / "summary.md").read_text()
    row_1 = next(line for line in summary.splitlines() if line.startswith("| optimizer.lr=0.1 |"))
    assert f"| {100 * d_1:+.2f} pt [{100 * low_1:+.2f}, {100 * high_1:+.2f}], p_holm<0.001: worse |" in row_1
    row_01 = next(line for line in summary.splitlines() if line.startswith("| optimizer.lr=0.01 |"))
    assert f", p_holm={holm_01:.3f}: not resolved by 3 seeds |" in row_01
    assert "Holm-adjusted over the grid's 2 comparisons" in summary
    for png in ("curves.png", "time.png"):
        assert (seeded_sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_report_says_what_the_seeds_resolve_and_what_a_difference_would_take(seeded_sweep, capsys):
    assert report_command.main([str(seeded_sweep), "--resolve", "0.1"]) == 0
    std = float(np.median([np.std(v, ddof=1) for v in VAL.values()]))  # a typical point's spread
    d = optimize.brentq(lambda d: power_by_hand(d, 3) - 0.80, 0.1, 6)  # 3 seeds: the fewest of a point
    seeds = next(n for n in range(2, 10_000) if power_by_hand(0.001 / std, n) >= 0.80)
    expected = f"best_val_acc: with 3 seeds per point and a typical std of {100 * std:.2f} pt"
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"{expected} (the median over points), a difference of {100 * d * std:.2f} pt is found" in printed
    assert f"A difference of 0.1 pt would take {seeds} seeds per point." in printed
    summary = (seeded_sweep / "summary.md").read_text()
    assert f"{expected} (the median over points), a difference of {100 * d * std:.2f} pt" in summary


def test_a_point_whose_seeds_are_far_from_normal_gets_its_median_range_and_a_bootstrap(tmp_path):
    values = {0.001: [0.971, 0.975, 0.973, 0.972, 0.974], 0.1: [0.970, 0.972, 0.971, 0.10, 0.973]}
    number = 0
    for lr, seeds in values.items():
        for seed, val in enumerate(seeds):
            make_job(tmp_path, number, lr, seed, val)
            number += 1
    report.write_report(tmp_path, show=False)
    lines = (tmp_path / "summary.md").read_text().splitlines()
    collapsed = next(line for line in lines if line.startswith("| optimizer.lr=0.1 |"))
    assert "; median 0.9710, range 0.1000–0.9730 (far from normal)" in collapsed
    assert "; bootstrap [" in collapsed
    best = next(line for line in lines if line.startswith("| optimizer.lr=0.001 |"))
    assert "median" not in best and "bootstrap" not in best
    assert next(line for line in lines if line.startswith("**Far from normal**")).endswith(": optimizer.lr=0.1.")
    row = read_points(tmp_path)[1]
    assert float(row["best_val_acc_shapiro_p"]) < 0.05
    assert float(row["best_val_acc_diff_to_best_bootstrap_low"]) < float(row["best_val_acc_diff_to_best"]) < 0


def test_resolve_on_a_sweep_of_one_seed_per_point_says_what_to_run(tmp_path, capsys):
    for number, lr in enumerate(VAL):
        make_job(tmp_path, number, lr, 0, VAL[lr][0])
    assert report_command.main([str(tmp_path), "--resolve", "0.1"]) == 1
    assert capsys.readouterr().err.startswith("error: --resolve needs a sweep whose points ran several seeds")


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
