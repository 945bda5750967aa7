"""The statistics of a sweep whose grid points each ran with several seeds.

Jobs whose overrides differ only in ``seed`` are one *point* of the grid (``seed`` changes the
weights' init, the dropout masks and the per-epoch batch order; the train/val split has its own
``data.split_seed`` and stays fixed). Per point and per metric the report gives n, mean, std
(ddof 1) and a 95 % t-based confidence interval of the mean. The best point is the one with the
highest mean best val acc; every other point's best val acc and test acc are compared with the
best's (``findings``): the difference with its 95 % Welch–Satterthwaite interval, Welch's p
Holm-adjusted across the grid's comparisons, and the verdict "better", "worse" or "not resolved
by n seeds". Where a point's seeds are far from normal (Shapiro–Wilk), the median and range and
a bootstrap interval stand beside the t-based numbers. A line per sweep says what difference
these seeds can resolve.

This module computes those numbers (``summarize``, ``resolution_lines``); replicates_report.py
writes and prints them, and ``analysis.summary`` calls its ``write_report`` when some point ran
more than one seed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from mnist_lab.analysis import findings

SEED_KEY = "seed"
METRICS = ("best_val_acc", "test_acc", "final_train_loss", "train_time_s")
COMPARED = ("best_val_acc", "test_acc")  # compared with the best point, which is picked on the first
CONFIDENCE = findings.CONFIDENCE


def is_replicated(jobs: pd.DataFrame) -> bool:
    """True when some grid point ran more than once (with different seeds)."""
    return bool((jobs.groupby("point", sort=False).size() > 1).any())


def point_of(overrides: list[str]) -> str:
    """A job's grid point: its overrides without the seed."""
    return " ".join(o for o in overrides if o.lstrip("+~").split("=", 1)[0] != SEED_KEY)


def describe(values) -> dict[str, float]:
    """n, mean, std (ddof 1) and the 95 % t-interval of the mean of the finite values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    mean = x.mean() if n else math.nan
    std = x.std(ddof=1) if n > 1 else math.nan
    if n > 1 and std > 0:
        low, high = stats.t.interval(CONFIDENCE, n - 1, loc=mean, scale=std / math.sqrt(n))
    elif n > 1:  # every seed gave the same number: the interval is that number
        low = high = mean
    else:
        low = high = math.nan
    return {"n": n, "mean": mean, "std": std, "ci_low": low, "ci_high": high}


def summarize(jobs: pd.DataFrame) -> pd.DataFrame:
    """One row per point, best mean val acc first: n, statuses, and each metric's statistics."""
    rows = []
    for point, group in jobs.groupby("point", sort=False):
        counts = group["status"].value_counts()
        row = {"point": point, "n": len(group), "status": ", ".join(f"{n} {status}" for status, n in counts.items())}
        for metric in METRICS:
            for stat, value in describe(group[metric]).items():
                if stat != "n":
                    row[f"{metric}_{stat}"] = value
        row["seeds"] = " ".join(str(s) for s in group.get(SEED_KEY, pd.Series(dtype=object)))
        rows.append(row)
    points = pd.DataFrame(rows).sort_values("best_val_acc_mean", ascending=False, na_position="last")
    points = points.reset_index(drop=True)
    for metric in COMPARED:
        compare_with_best(points, jobs, metric)
    return points


def compare_with_best(points: pd.DataFrame, jobs: pd.DataFrame, metric: str) -> None:
    """Adds ``metric``'s columns against the best point (row 0): the point's median, range and
    Shapiro–Wilk p; its difference to the best with the 95 % Welch–Satterthwaite interval and a
    bootstrap interval; Welch's p Holm-adjusted over the other points; and the verdict."""
    values = [jobs.loc[jobs["point"] == p, metric].tolist() for p in points["point"]]
    shapes = pd.DataFrame([findings.shape(v) for v in values])
    for stat in shapes.columns:
        points[f"{metric}_{stat}"] = shapes[stat]
    tests = [findings.welch_of(v, values[0]) for v in values[1:]]
    booted = [findings.bootstrap_difference(v, values[0]) for v in values[1:]]
    p_holm = findings.holm([t["p"] for t in tests])
    nan = math.nan
    diff = f"{metric}_diff_to_best"
    points[diff] = [0.0, *(t["diff"] for t in tests)]
    points[f"{diff}_ci_low"] = [nan, *(t["ci_low"] for t in tests)]
    points[f"{diff}_ci_high"] = [nan, *(t["ci_high"] for t in tests)]
    points[f"{diff}_bootstrap_low"] = [nan, *(low for low, _ in booted)]
    points[f"{diff}_bootstrap_high"] = [nan, *(high for _, high in booted)]
    points[f"{metric}_p_holm"] = [nan, *p_holm]
    n = [len(findings.finite(v)) for v in values]
    points[f"{metric}_vs_best"] = [
        "best",
        *(findings.verdict(t["diff"], p, k, n[0]) for t, p, k in zip(tests, p_holm, n[1:], strict=True)),
    ]


def resolution(points: pd.DataFrame, metric: str) -> tuple[int, float, float]:
    """What the sweep's seeds resolve in ``metric``: the fewest seeds of a point (n >= 2), a typical
    point's std (the median over points: one point whose seeds collapse would otherwise set the
    spread of all) and the difference detectable with those (``findings.detectable_difference``)."""
    tested = points[points["n"] > 1]
    n = int(tested["n"].min()) if len(tested) else 0
    std = float(tested[f"{metric}_std"].median()) if len(tested) else math.nan
    return n, std, findings.detectable_difference(std, n)


def resolution_lines(points: pd.DataFrame, resolve: float | None = None) -> list[str]:
    """One sentence per compared metric: the difference these seeds detect, and, with ``resolve``
    (in accuracy points), the seeds that difference would take."""
    lines = []
    for metric in COMPARED:
        n, std, detectable = resolution(points, metric)
        if math.isnan(detectable):
            lines.append(f"{metric}: no point's seeds vary, so no difference can be resolved from them.")
            continue
        line = (
            f"{metric}: with {n} seeds per point and a typical std of {100 * std:.2f} pt (the median over "
            f"points), a difference of {100 * detectable:.2f} pt is found 4 times in 5 "
            f"({findings.POWER:.0%} power, two-sided p < {findings.ALPHA} before the Holm adjustment)."
        )
        if resolve is not None:
            seeds = findings.seeds_needed(resolve / 100, std)
            line += f" A difference of {resolve:g} pt would take {seeds} seeds per point."
        lines.append(line)
    return lines
