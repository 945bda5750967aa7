"""The report of a sweep whose grid points each ran with several seeds.

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

from mnist_lab.analysis import findings
from mnist_lab.analysis.figures import curve_axes, save_curves, save_png, time_axes, time_title
from mnist_lab.records.atomic_files import replaced_atomically

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
    if metric in COMPARED and far_from_normal(row, metric):
        text += f"; median {row[f'{metric}_median']:{digits}}, range {row[f'{metric}_min']:{digits}}–"
        text += f"{row[f'{metric}_max']:{digits}} (far from normal)"
    return text


def far_from_normal(row, metric: str) -> bool:
    return findings.far_from_normal(row[f"{metric}_shapiro_p"])


def points_text(value: float) -> str:
    return f"{100 * value:+.2f}"


def vs_best(row, metric: str, best) -> str:
    """The point's difference to the best in accuracy points, its intervals, the Holm p and the
    verdict: "-0.78 pt [-0.93, -0.63], p_holm<0.001: worse"."""
    verdict = row[f"{metric}_vs_best"]
    diff = f"{metric}_diff_to_best"
    if row.name == 0 or math.isnan(row[f"{metric}_p_holm"]):
        return verdict
    p, low, high = row[f"{metric}_p_holm"], row[f"{diff}_ci_low"], row[f"{diff}_ci_high"]
    text = f"{points_text(row[diff])} pt [{points_text(low)}, {points_text(high)}]"
    text += (", p_holm<0.001" if p < 0.001 else f", p_holm={p:.3f}") + f": {verdict}"
    low, high = row[f"{diff}_bootstrap_low"], row[f"{diff}_bootstrap_high"]
    if (far_from_normal(row, metric) or far_from_normal(best, metric)) and not math.isnan(low):
        text += f"; bootstrap [{points_text(low)}, {points_text(high)}]"
    return text


def legend(points: pd.DataFrame) -> str:
    """What the vs-best columns and the far-from-normal numbers are, for summary.md."""
    comparisons = int((points.index > 0).sum())
    rows = zip(labels_of(points["point"]), points.iterrows(), strict=True)
    odd = [label for label, (_, row) in rows if far_from_normal(row, COMPARED[0])]
    return (
        f"**vs best**: the point's mean minus the best point's (the best: highest mean best_val_acc; its "
        f"test_acc beside it), in accuracy points, with the {CONFIDENCE:.0%} Welch–Satterthwaite interval; "
        f"p_holm: Welch's t-test, Holm-adjusted over the grid's {comparisons} comparisons with the best "
        f"(statsmodels multipletests); better or worse when p_holm < {findings.ALPHA}, otherwise not resolved "
        "by n seeds: no evidence either way, not evidence of equality.\n\n"
        f"**Far from normal** (Shapiro–Wilk p < {findings.ALPHA} over a point's best_val_acc seeds, scipy): "
        "the point's median and range, and a percentile bootstrap interval of its difference "
        "(scipy.stats.bootstrap), stand beside the t-based numbers, which mislead there: "
        f"{', '.join(odd) or 'none'}.\n\n"
        "**What these seeds resolve**:\n\n" + "\n".join(f"- {line}" for line in resolution_lines(points))
    )


def write_tables(points: pd.DataFrame, jobs: pd.DataFrame, sweep_dir: Path) -> None:
    with replaced_atomically(sweep_dir / "summary.csv") as tmp:
        points.to_csv(tmp, index=False)
    header = ["point", "n", "status", *(f"{m} mean ± std [95 % CI]" for m in METRICS)]
    header += [f"{m} vs best" for m in COMPARED]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = points.iloc[0]
    for label, (_, row) in zip(labels_of(points["point"]), points.iterrows(), strict=True):
        cells = [label, str(row["n"]), row["status"], *(cell(row, m) for m in METRICS)]
        cells += [vs_best(row, m, best) for m in COMPARED]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
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
        f"of the mean over seeds.\n\n" + "\n".join(lines) + "\n\n" + legend(points) + "\n\n"
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


def print_table(points: pd.DataFrame, sweep_dir: Path, resolve: float | None = None) -> None:
    table = Table(
        title=f"sweep {sweep_dir}: mean ± std [{CONFIDENCE:.0%} CI] over seeds",
        caption=(
            f"vs best: the difference to the best point (highest mean best_val_acc) in accuracy points "
            f"[{CONFIDENCE:.0%} Welch interval], Welch's p Holm-adjusted over the grid (summary.md says more)"
        ),
    )
    columns = ("point", "n", "status", *METRICS, *(f"{m} vs best" for m in COMPARED))
    for column in columns:
        table.add_column(column, justify="left" if column in ("point", "status") else "right", overflow="fold")
    best = points.iloc[0]
    for label, (_, row) in zip(labels_of(points["point"]), points.iterrows(), strict=True):
        style = "dim" if row[f"{COMPARED[0]}_vs_best"] == "worse" else None
        metrics = (cell(row, m, interval=m == "best_val_acc") for m in METRICS)
        verdicts = (vs_best(row, m, best) for m in COMPARED)
        table.add_row(label, str(row["n"]), row["status"], *metrics, *verdicts, style=style)
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for line in resolution_lines(points, resolve):
        console.print(line, highlight=False)


def write_report(
    jobs: pd.DataFrame, sweep_dir: Path, losses_of: Callable, show: bool = True, resolve: float | None = None
) -> pd.DataFrame:
    """summary.csv/.md, curves.png and time.png of a seed-replicated sweep; returns the points.
    ``resolve`` (accuracy points): the printed lines also say how many seeds that difference takes."""
    points = summarize(jobs)
    write_tables(points, jobs, sweep_dir)
    plot_curves(points, jobs, sweep_dir, losses_of)
    plot_times(points, jobs, sweep_dir)
    if show:
        print_table(points, sweep_dir, resolve)
    return points
