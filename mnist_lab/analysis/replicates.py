"""The report of a sweep whose grid points each ran with several seeds.

Jobs whose overrides differ only in ``seed`` are one *point* of the grid (``seed`` changes the
weights' init, the dropout masks and the per-epoch batch order; the train/val split has its own
``data.split_seed`` and stays fixed). Per point and per metric the report gives n, mean, std
(ddof 1) and a 95 % t-based confidence interval of the mean; then it compares every point's best
val acc with the best point's by Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``):
a point with p >= ALPHA is indistinguishable from the best at this number of seeds.

``mnist_lab.report`` calls ``write_report`` here when some point ran more than one seed.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from scipy import stats

from mnist_lab.analysis.figures import curve_axes, save_curves, save_png, time_axes, time_title
from mnist_lab.records.atomic_files import replaced_atomically

SEED_KEY = "seed"
METRICS = ("best_val_acc", "test_acc", "final_train_loss", "train_time_s")
CONFIDENCE = 0.95
ALPHA = 0.05  # Welch's p below this: the point differs from the best; at or above: indistinguishable
TEST_NAME = (
    f"Welch's t-test of best_val_acc against the best point (scipy.stats.ttest_ind, equal_var=False), p >= {ALPHA}"
)


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


def welch_p(a, b) -> float:
    """Welch's two-sided p-value; NaN if either side has under two values."""
    a, b = (np.asarray([v for v in s if v is not None and math.isfinite(v)]) for s in (a, b))
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std() == 0 and b.std() == 0:  # scipy returns NaN here; equal constants do not differ
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


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
    best = jobs.loc[jobs["point"] == points.loc[0, "point"], "best_val_acc"]
    points["p_vs_best"] = [
        math.nan if i == 0 else welch_p(best, jobs.loc[jobs["point"] == p, "best_val_acc"])
        for i, p in enumerate(points["point"])
    ]
    points["indistinguishable_from_best"] = [i == 0 or p >= ALPHA for i, p in enumerate(points["p_vs_best"])]
    return points


def labels_of(points: pd.Series) -> list[str]:
    """Each point named by the overrides that differ between points."""
    split = [set(p.split()) for p in points]
    shared = set.intersection(*split) if len(split) > 1 else set()
    return [" ".join(o for o in p.split() if o not in shared) or "(one point)" for p in points]


def digits_of(metric: str) -> str:
    return ".4f" if metric.endswith("acc") else (".4g" if metric == "final_train_loss" else ".1f")


def cell(row, metric: str, interval: bool = True) -> str:
    mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
    if math.isnan(mean):
        return ""
    digits = digits_of(metric)
    text = f"{mean:{digits}}" + ("" if math.isnan(std) else f" ± {std:{digits}}")
    low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
    if interval and not math.isnan(low):
        text += f" [{low:{digits}}, {high:{digits}}]"
    return text


def verdict(row) -> str:
    if math.isnan(row["p_vs_best"]):
        return "best" if row.name == 0 else "n < 2: no test"
    p = row["p_vs_best"]
    return ("p<0.001 " if p < 0.001 else f"p={p:.3f} ") + ("≈ best" if row["indistinguishable_from_best"] else "worse")


def write_tables(points: pd.DataFrame, jobs: pd.DataFrame, sweep_dir: Path) -> None:
    with replaced_atomically(sweep_dir / "summary.csv") as tmp:
        points.to_csv(tmp, index=False)
    header = ["point", "n", "status", *(f"{m} mean ± std [95 % CI]" for m in METRICS), "vs best"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, (_, row) in zip(labels_of(points["point"]), points.iterrows(), strict=True):
        cells = [label, str(row["n"]), row["status"], *(cell(row, m) for m in METRICS), verdict(row)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    same = [
        label for label, ok in zip(labels_of(points["point"]), points["indistinguishable_from_best"], strict=True) if ok
    ]
    job_cols = ["job", "status", *METRICS, "error"]
    job_lines = ["| " + " | ".join(job_cols) + " |", "|" + "---|" * len(job_cols)]
    for _, job in jobs.iterrows():
        values = (
            ""
            if not isinstance(job[c], str) and pd.isna(job[c])
            else f"{job[c]:{digits_of(c)}}"
            if c in METRICS
            else str(job[c])
            for c in job_cols
        )
        job_lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    text = (
        f"# Sweep {sweep_dir}\n\n{len(points)} grid points, {len(jobs)} jobs; a point is the jobs "
        f"that differ only in `{SEED_KEY}`. Mean ± std (ddof 1) and the {CONFIDENCE:.0%} t-interval "
        f"of the mean over seeds.\n\n" + "\n".join(lines) + "\n\n"
        f"Indistinguishable from the best ({TEST_NAME}): {', '.join(same)}.\n\n"
        "## Jobs\n\n" + "\n".join(job_lines) + "\n"
    )
    with replaced_atomically(sweep_dir / "summary.md") as tmp:
        tmp.write_text(text)


def mean_band(lines: list[tuple[list, list]], spread: str) -> tuple[np.ndarray, ...]:
    """x, mean, and the band's lower and upper edge of lines sampled at the same x: mean ± 1 std
    (ddof 1; 0 for one line) for ``spread="std"``, the lowest and highest line for "range"."""
    frame = pd.concat([pd.Series(y, index=x, dtype=float) for x, y in lines if len(x)], axis=1)
    mean = frame.mean(axis=1).to_numpy()
    if spread == "range":  # a log axis cannot show mean - std when the spread is large
        return frame.index.to_numpy(), mean, frame.min(axis=1).to_numpy(), frame.max(axis=1).to_numpy()
    std = frame.std(axis=1).fillna(0).to_numpy()
    return frame.index.to_numpy(), mean, mean - std, mean + std


def plot_curves(
    points: pd.DataFrame, jobs: pd.DataFrame, sweep_dir: Path, losses_of: Callable[[Path], tuple[list, list]]
) -> None:
    """Mean val acc per epoch (band ±1 std) and mean train loss per step (band: lowest to highest
    seed) of each point."""
    fig, acc_ax, loss_ax = curve_axes()
    for label, point in zip(labels_of(points["point"]), points["point"], strict=True):
        group = jobs[jobs["point"] == point]
        color = acc_ax.plot([], [])[0].get_color()
        n = len(group)
        accs = [(list(range(1, len(v) + 1)), v) for v in group["val_acc"] if v]
        if accs:
            x, mean, low, high = mean_band(accs, "std")
            acc_ax.plot(x, mean, marker="o", color=color, label=f"{label} (n={n})")
            acc_ax.fill_between(x, low, high, color=color, alpha=0.2)
        else:
            acc_ax.plot([], [], color=color, label=f"{label} (n={n})")
        losses = [losses_of(d) for d in group["job_dir"]]
        if any(len(s) for s, _ in losses):
            x, mean, low, high = mean_band(losses, "range")
            loss_ax.plot(x, mean, color=color, linewidth=0.8)
            loss_ax.fill_between(x, low, high, color=color, alpha=0.2)
    acc_ax.set(xlabel="epoch", ylabel="val accuracy", title="val accuracy per epoch: mean over seeds, band ±1 std")
    loss_title = "train loss per step: mean over seeds, band lowest to highest"
    loss_ax.set(xlabel="step", ylabel="train loss", yscale="log", title=loss_title)
    save_curves(fig, acc_ax, loss_ax, sweep_dir)


def plot_times(points: pd.DataFrame, jobs: pd.DataFrame, sweep_dir: Path) -> None:
    fig, ax = time_axes(len(points))
    means = points["train_time_s_mean"].fillna(0).to_numpy()
    ax.barh(range(len(points)), means, xerr=points["train_time_s_std"].fillna(0).to_numpy(), capsize=3)
    ax.set_yticks(range(len(points)), labels_of(points["point"]), fontsize="small")
    ax.invert_yaxis()  # the table's order: best mean val acc at the top
    packed = jobs[["packed"]].to_dict("records") if "packed" in jobs else []
    ax.set(xlabel="train_time_s, mean ± std over seeds", title=time_title("train time per grid point", packed))
    save_png(fig, sweep_dir / "time.png")


def print_table(points: pd.DataFrame, sweep_dir: Path) -> None:
    table = Table(
        title=f"sweep {sweep_dir}: mean ± std [{CONFIDENCE:.0%} CI] over seeds",
        caption=f"vs best: {TEST_NAME} means indistinguishable",
    )
    for column in ("point", "n", "status", *METRICS, "vs best"):
        table.add_column(column, justify="left" if column in ("point", "status") else "right", overflow="fold")
    for label, (_, row) in zip(labels_of(points["point"]), points.iterrows(), strict=True):
        style = None if row["indistinguishable_from_best"] else "dim"
        metrics = (cell(row, m, interval=m == "best_val_acc") for m in METRICS)
        table.add_row(label, str(row["n"]), row["status"], *metrics, verdict(row), style=style)
    Console(width=None if sys.stdout.isatty() else 200).print(table)


def write_report(jobs: pd.DataFrame, sweep_dir: Path, losses_of: Callable, show: bool = True) -> pd.DataFrame:
    """summary.csv/.md, curves.png and time.png of a seed-replicated sweep; returns the points."""
    points = summarize(jobs)
    write_tables(points, jobs, sweep_dir)
    plot_curves(points, jobs, sweep_dir, losses_of)
    plot_times(points, jobs, sweep_dir)
    if show:
        print_table(points, sweep_dir)
    return points
