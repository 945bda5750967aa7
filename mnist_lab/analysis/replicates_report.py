"""The report of a seed-replicated sweep (the numbers of replicates.py): ``summary.csv`` and
``summary.md`` (a row per grid point, its jobs below), ``curves.png`` and ``time.png`` (means over
seeds with their bands), and the table printed at the end of the sweep. ``analysis.summary``
calls ``write_report`` when some point ran more than one seed.
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

from mnist_lab.analysis import findings
from mnist_lab.analysis.figures import curve_axes, save_curves, save_png, time_axes, time_title
from mnist_lab.analysis.replicates import COMPARED, CONFIDENCE, METRICS, SEED_KEY, resolution_lines, summarize
from mnist_lab.records.atomic_files import replaced_atomically


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
