"""``mnist_lab.lab_check`` on hand-made job folders: it picks the jobs of each lab number's study
and point, and its verdict follows the rule of docs/studies.md (interval from a t table here,
the one-sample t-test's p from scipy's t distribution and Holm's adjustment written out)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from mnist_lab import lab_check

T_975_DF2 = 4.302652729911275  # two-sided 95 % quantile of Student's t, df 2 (a printed table)


def make_job(sweep: Path, number: int, overrides: list[str], val: float, test: float, status: str = "ok") -> None:
    job = sweep / str(number)
    job.mkdir(parents=True)
    metrics = {"status": status, "best_val_acc": val, "test_acc": test, "overrides": overrides}
    (job / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def sweeps(tmp_path) -> list[Path]:
    """An mlp_loss sweep (three losses x three seeds, and jobs that must not count) and a one-seed
    softmax_lr sweep."""
    val = {"mse_logits": [0.930, 0.934, 0.932], "l1_logits": [0.09, 0.14, 0.12], "ce": [0.960, 0.962, 0.961]}
    number = 0
    for loss, values in val.items():
        for seed, v in enumerate(values):
            make_job(tmp_path / "loss", number, ["experiment=mlp_loss", f"loss={loss}", f"seed={seed}"], v, 0.5)
            number += 1
    make_job(tmp_path / "loss", number, ["experiment=mlp_loss", "loss=ce", "seed=9"], 0.1, 0.1, "failed")
    make_job(tmp_path / "loss", number + 1, ["experiment=mlp_loss", "loss=ce", "trainer.max_epochs=1"], 0.1, 0.1)
    number += 2
    for lr in (0.5, 0.53):
        make_job(tmp_path / "lr", number, ["experiment=softmax_lr", f"optimizer.lr={lr}"], 0.5, 0.92 + lr / 100)
        number += 1
    return [tmp_path / "loss", tmp_path / "lr"]


def interval(values: list[float]) -> tuple[float, float, float]:
    x = np.array(values)
    half = T_975_DF2 * x.std(ddof=1) / np.sqrt(len(x))
    return x.mean(), x.mean() - half, x.mean() + half


def p_by_hand(values: list[float], lab: float) -> float:
    """The one-sample t-test's two-sided p of our seeds against the lab's number."""
    x = np.array(values)
    t = (x.mean() - lab) / (x.std(ddof=1) / np.sqrt(len(x)))
    return 2 * stats.t.sf(abs(t), len(x) - 1)


def holm_by_hand(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest p times (m - k + 1), never below the one before."""
    order, adjusted, running = np.argsort(ps), [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def test_each_lab_number_gets_its_jobs_and_the_verdict_of_the_rule(sweeps, capsys):
    assert lab_check.main([str(s) for s in sweeps]) == 0
    rows = {line.split("|")[2].strip(): line for line in capsys.readouterr().out.splitlines()[2:]}
    assert set(rows) == {
        "`mlp_loss`: MSE on raw outputs",
        "`mlp_loss`: L1 on raw outputs",
        "`mlp_loss`: CE",
        "`softmax_lr`: lr 0.53",
    }
    seeds = {
        "MSE": ([0.930, 0.934, 0.932], 0.9310),
        "L1": ([0.09, 0.14, 0.12], 0.1102),
        "CE": ([0.960, 0.962, 0.961], 0.9681),
    }
    holm = dict(zip(seeds, holm_by_hand([p_by_hand(*v) for v in seeds.values()]), strict=True))  # 3 tests
    mean, low, high = interval(seeds["MSE"][0])  # the lab's 0.9310 lies inside, and all of it within a point
    lab = 0.9310
    assert low < lab < high and rows["`mlp_loss`: MSE on raw outputs"].endswith(
        f"| {100 * mean:.2f} ± 0.20 % (3) | {100 * low:.2f} – {100 * high:.2f} "
        f"| {100 * (mean - lab):+.2f} [{100 * (low - lab):+.2f}, {100 * (high - lab):+.2f}] | {holm['MSE']:.3f} "
        "| reproduced |"
    )
    mean, low, high = interval(seeds["L1"][0])  # 0.1102 inside an interval that reaches 5 points past it
    assert low < 0.1102 < high and high - 0.1102 > 0.01 and holm["L1"] >= 0.05
    assert rows["`mlp_loss`: L1 on raw outputs"].endswith("| not resolved by 3 seeds |")
    mean, low, high = interval(seeds["CE"][0])  # 0.9681 above it, but within a point
    assert high < 0.9681 and abs(0.9681 - mean) < 0.01 and holm["CE"] < 0.05
    assert rows["`mlp_loss`: CE"].endswith(f"| {holm['CE']:.3f} | within 1 point |")
    assert "| 92.53 % (1) |  |  |  | one seed |" in rows["`softmax_lr`: lr 0.53"]  # lr 0.5 is not a lab number


def test_far_from_the_lab_is_not_reproduced():
    def row(diff, low, high, p_holm):
        return {"n": 3, "diff": diff, "diff_ci_low": low, "diff_ci_high": high, "p_holm": p_holm}

    assert lab_check.verdict(row(-0.0253, -0.030, -0.020, 0.001)) == "not reproduced"
    assert lab_check.verdict(row(-0.003, -0.008, 0.002, 0.4)) == "reproduced"
    assert lab_check.verdict(row(-0.007, -0.011, -0.003, 0.01)) == "within 1 point"
    assert lab_check.verdict(row(0.003, -0.02, 0.026, 0.7)) == "not resolved by 3 seeds"


def test_holm_over_the_rows_can_turn_a_small_offset_into_no_finding():
    """One lab number alone: ours is 0.12 points below it, p = 0.02 < 0.05: within 1 point. Three
    such numbers in one call: each p times 3 is above 0.05, and the interval stays within a point."""
    ours = {"n": 5, "mean": 0.9750, "std": 0.0010}
    number = lab_check.LabNumber("003", "mlp_lr", "lr 0.001", "best_val_acc", 0.9765)
    p = p_by_hand([0.9750 + 0.0010 * z for z in (-1.2649, -0.6325, 0, 0.6325, 1.2649)], 0.9765)  # std 0.0010
    assert p < 0.05 <= 3 * p
    [alone] = lab_check.judge([{"number": number, **ours}])
    assert alone["p"] == pytest.approx(p, rel=1e-3) and alone["verdict"] == "within 1 point"
    three = lab_check.judge([{"number": number, **ours} for _ in range(3)])
    assert [r["p_holm"] for r in three] == pytest.approx([3 * p] * 3, rel=1e-3)
    assert [r["verdict"] for r in three] == ["reproduced"] * 3


def test_sweeps_without_a_lab_number_get_one_sentence(tmp_path, capsys):
    make_job(tmp_path, 0, ["optimizer.lr=0.1"], 0.5, 0.5)
    assert lab_check.main([str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith("error: none of these sweeps ran a study with a lab number")


def test_lab_000_base_network_compares_only_the_14_epoch_runs(tmp_path, capsys):
    """Lab 000 prints test acc after every epoch; a sweep over trainer.max_epochs holds shorter
    runs too, and only the 14-epoch ones answer the lab's final number."""
    sweep, number = tmp_path / "gamma", 0
    for epochs, tests in ((1, [0.69, 0.70, 0.66]), (14, [0.8907, 0.8916, 0.8930])):
        for seed, test in enumerate(tests):
            overrides = [
                "experiment=mlp512_gamma",
                "scheduler.gamma=0.85",
                f"trainer.max_epochs={epochs}",
                "~callbacks.checkpoint",  # the test then uses the last weights
                "data.data_dir=/elsewhere",  # where MNIST lives is no part of the point
                f"seed={seed}",
            ]
            make_job(sweep, number, overrides, 0.5, test)
            number += 1
    assert lab_check.main([str(sweep)]) == 0
    [row] = capsys.readouterr().out.splitlines()[2:]
    mean, low, high = interval([0.8907, 0.8916, 0.8930])
    assert row.startswith("| 000 | `mlp512_gamma`: γ 0.85 | 89.15 % test |")
    assert f"| {100 * mean:.2f} ± 0.12 % (3) | {100 * low:.2f} – {100 * high:.2f} | " in row
    assert row.endswith("| reproduced |")
