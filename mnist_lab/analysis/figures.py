"""The sweep report's figures, ``curves.png`` and ``time.png``: their frame (shared by the
per-job report, ``report.py``, and the seed-replicated one, ``replicates_report.py``), and the per-job
version of each."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from matplotlib.axes import Axes
from matplotlib.figure import Figure  # the OO API: renders with Agg, no GUI backend, no pyplot

from mnist_lab.records.atomic_files import replaced_atomically

MAX_POINTS = 2000  # a longer per-step loss line is drawn as the mean of consecutive steps
STATUS_COLORS = {"ok": "tab:blue", "diverged": "tab:orange", "failed": "tab:red"}
Losses = Callable[[Path], tuple[list, list]]  # a job dir -> its steps and train losses


def curve_axes() -> tuple[Figure, Axes, Axes]:
    """curves.png's figure: val accuracy per epoch on the left, train loss per step on the right."""
    fig = Figure(figsize=(13, 5.5), layout="constrained")
    acc_ax, loss_ax = fig.subplots(1, 2)
    return fig, acc_ax, loss_ax


def save_curves(fig: Figure, acc_ax: Axes, loss_ax: Axes, sweep_dir: Path) -> None:
    """Grids, one legend under both panels (the accuracy panel's labels), and curves.png."""
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(3, max(1, len(labels))), fontsize="small")
    save_png(fig, sweep_dir / "curves.png")


def time_axes(bars: int) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(9, 1.5 + 0.35 * bars), layout="constrained")
    return fig, fig.subplots()


def save_png(fig: Figure, path: Path) -> None:
    with replaced_atomically(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def thin(steps: list[int], values: list[float]) -> tuple[list[float], list[float]]:
    """At most MAX_POINTS points: the mean of each run of consecutive steps (readable, and fast)."""
    k = max(1, math.ceil(len(values) / MAX_POINTS))
    if k == 1:
        return steps, values
    chunks = range(0, len(values), k)
    return (
        [sum(steps[i : i + k]) / len(steps[i : i + k]) for i in chunks],
        [sum(values[i : i + k]) / len(values[i : i + k]) for i in chunks],
    )


def plot_job_curves(rows: list[dict], labels: list[str], sweep_dir: Path, losses_of: Losses) -> None:
    """Val acc per epoch and train loss per step, one line per job."""
    fig, acc_ax, loss_ax = curve_axes()
    longest, shortest = 0, math.inf
    for row, label in zip(rows, labels, strict=True):
        if row["val_acc"]:
            acc_ax.plot(range(1, len(row["val_acc"]) + 1), row["val_acc"], marker="o", label=label)
        else:
            acc_ax.plot([], [], label=label)  # keep the colours of both panels in step
        steps, losses = losses_of(row["job_dir"])
        if steps:
            longest, shortest = max(longest, steps[-1]), min(shortest, steps[-1])
            loss_ax.plot(*thin(steps, losses), linewidth=0.8, alpha=0.85, label=label)
        else:
            loss_ax.plot([], [])
    acc_ax.set(xlabel="epoch", ylabel="val accuracy", title="validation accuracy per epoch")
    loss_title = f"train loss per step (lines longer than {MAX_POINTS} steps: block means)"
    loss_ax.set(xlabel="step", ylabel="train loss", yscale="log", title=loss_title)
    if longest > 20 * shortest:  # a batch-size sweep: batch 1 takes 256x the steps of batch 256
        loss_ax.set_xscale("log")
    save_curves(fig, acc_ax, loss_ax, sweep_dir)


def plot_job_times(rows: list[dict], labels: list[str], sweep_dir: Path) -> None:
    fig, ax = time_axes(len(rows))
    times = [row["train_time_s"] or 0.0 for row in rows]
    colors = [STATUS_COLORS.get(row["status"], "tab:gray") for row in rows]
    bars = ax.barh(range(len(rows)), times, color=colors)
    bar_labels = [
        f"{t:.1f}s {row['status']}" + (f", pack of {row['packed']}" if in_pack(row) else "")
        for t, row in zip(times, rows, strict=True)
    ]
    ax.bar_label(bars, bar_labels, padding=3, fontsize="small")
    ax.set_yticks(range(len(rows)), labels, fontsize="small")
    ax.invert_yaxis()  # the table's order: best val acc at the top
    ax.set(xlabel="train_time_s (training and validation epochs)", title=time_title("train time per job", rows))
    ax.margins(x=0.2)
    save_png(fig, sweep_dir / "time.png")


def time_title(title: str, rows) -> str:
    """A time figure's title; it says so when some job trained in a pack (its time is the pack's,
    every job of the pack shows the same: time one job with hydra/launcher=basic)."""
    if any(in_pack(row) for row in rows):
        return f"{title}\n(packed jobs: the time of their whole pack; hydra/launcher=basic times each alone)"
    return title


def in_pack(row) -> bool:
    """Whether a job's row says it trained in a pack (``packed``: None or NaN when alone)."""
    return (row.get("packed") or 0) > 1
