"""The sweep report, which ``python -m mnist_lab.report <sweep dir>`` and every ``--multirun`` write.

Reads every job's ``metrics.json`` (and its TensorBoard events, for the loss of every step) and
writes into the sweep dir:

- ``summary.csv`` and ``summary.md``: one row per job, best val acc first;
- ``curves.png``: val accuracy per epoch and train loss per step, one line per job;
- ``time.png``: train time per job (a packed job's is its pack's: ``packed`` says how many
  jobs shared it);

then prints the table, and under it the jobs that did not finish with the command that resumes
them (``mnist_lab.analysis.unfinished``). Every ``--multirun`` runs it at its end
(``mnist_lab.analysis.sweep``). A sweep whose grid points ran with several seeds (``seed=0,1,2``
or ``seed='range(5)'``) gets the replicated report instead: one row per point with mean, std
and a 95 % interval over the seeds, and each point's difference to the best with its interval,
Holm-adjusted p and verdict (``mnist_lab.analysis.replicates``).

``load(sweep_dir)`` gives the jobs as a pandas DataFrame for a notebook's own analysis.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import sys
from pathlib import Path

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from mnist_lab.analysis import replicates, replicates_report
from mnist_lab.analysis.figures import plot_job_curves, plot_job_times, thin
from mnist_lab.analysis.unfinished import unfinished_line
from mnist_lab.records.atomic_files import replaced_atomically
from mnist_lab.records.metrics_file import METRICS_FILE, NUMBER, RecordError, read_record
from mnist_lab.tracking import event_files

COLUMNS = (
    "job",
    "overrides",
    "status",
    "best_val_acc",
    "test_acc",
    "final_train_loss",
    "epochs",
    "train_time_s",
    "packed",  # jobs in the pack it trained in (its train_time_s is the pack's), empty if alone
    "diverged_at_step",
    "error",
)
REPORT_FILES = ("summary.csv", "summary.md", "curves.png", "time.png")  # written into the sweep dir
logging.getLogger("tensorboard").setLevel(logging.WARNING)  # not a line per events file read


def find_jobs(sweep_dir: Path) -> list[Path]:
    """Job folders: those with a metrics.json, or a .hydra folder (a job that died early)."""
    patterns = (f"*/{METRICS_FILE}", "*/.hydra")
    jobs = {path.parent for pattern in patterns for path in sweep_dir.glob(pattern)}
    if not jobs and (sweep_dir / METRICS_FILE).exists():  # a single run's folder
        jobs = {sweep_dir}

    def job_number(path: Path) -> float:
        number = path.name.split("_")[0]
        return int(number) if number.isdigit() else math.inf

    return sorted(jobs, key=lambda p: (job_number(p), p.name))


def read_job(job_dir: Path) -> dict:
    """One row of the table, plus the per-epoch ``val_acc`` and the job's ``overrides`` list."""
    try:
        metrics = read_record(job_dir / METRICS_FILE)
    except RecordError as problem:  # no record, or one damaged outside mnist_lab
        overrides_file = job_dir / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.load(overrides_file) if overrides_file.exists() else []
        metrics = {"status": "failed", "overrides": [str(o) for o in overrides], "error": str(problem)}
    row = {key: metrics.get(key) for key in COLUMNS}
    row["job"] = job_dir.name
    row["job_dir"] = job_dir
    row["overrides"] = " ".join(metrics.get("overrides", []))
    row["override_list"] = list(metrics.get("overrides", []))
    row["val_acc"] = [v for v in metrics.get("val_acc", []) if isinstance(v, NUMBER)]
    return row


def typed(value):
    """An override's parsed value as a notebook wants it: lists as tuples (hashable, groupable)."""
    if isinstance(value, list | tuple):
        return tuple(typed(v) for v in value)
    return value


def typed_overrides(overrides: list[str]) -> dict:
    """``["optimizer.lr=0.01", "model.hidden=[64,32]"]`` -> ``{"optimizer.lr": 0.01, "model.hidden": (64, 32)}``

    Parsed by Hydra's own override grammar, so every value has the type the job saw.
    """
    parser, values = OverridesParser.create(), {}
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
            values[override.key_or_group] = typed(override.value())
        except HydraException:  # not Hydra's grammar (a record written by hand): keep the text
            key, _, value = text.lstrip("+~").partition("=")
            values[key] = value
    return values


def rows_of(sweep_dir: Path) -> list[dict]:
    """Every job's row (see read_job); a ValueError (one sentence) if there are none."""
    if not sweep_dir.is_dir():
        raise ValueError(f"{sweep_dir} is not a folder; pass a sweep dir such as outputs/multirun/<date>/<time>.")
    jobs = find_jobs(sweep_dir)
    if not jobs:
        raise ValueError(
            f"{sweep_dir} holds no job folders (none with {METRICS_FILE}); pass the sweep dir a "
            "--multirun wrote, e.g. outputs/multirun/<date>/<time>."
        )
    return [read_job(job) for job in jobs]


def frame_of(rows: list[dict]) -> pd.DataFrame:
    overrides = pd.DataFrame([typed_overrides(r["override_list"]) for r in rows])
    jobs = pd.DataFrame(rows).drop(columns="override_list")
    jobs.insert(1, "point", [replicates.point_of(r["override_list"]) for r in rows])
    metrics = jobs.drop(columns=[c for c in overrides.columns if c in jobs.columns])
    return pd.concat([metrics.iloc[:, :3], overrides, metrics.iloc[:, 3:]], axis=1)


def load(sweep_dir: str | os.PathLike) -> pd.DataFrame:
    """The sweep's jobs, one row each: ``job``, ``point`` (its overrides without the seed),
    ``overrides``, one typed column per override key (``optimizer.lr`` floats, ``model.hidden``
    tuples, ``seed`` ints), the metrics of summary.csv, ``val_acc`` (per epoch) and ``job_dir``.

        from mnist_lab.analysis.summary import load
        jobs = load("outputs/multirun/2026-11-30/01-02-03")
        jobs.groupby("optimizer.lr")["test_acc"].agg(["mean", "std", "count"])
    """
    return frame_of(rows_of(Path(sweep_dir)))


def _loss_events(run_dir: Path) -> list[event_files.ScalarEvent]:
    """The ``train/loss`` events of a run's TensorBoard folder (every step), or none."""
    return event_files.scalars(run_dir / "tensorboard", "train/loss")


def step_losses(job_dir: Path) -> tuple[list[int], list[float]]:
    """``train/loss`` at every step, from the job's TensorBoard events (finite values only)."""
    last = {e.step: e.value for e in _loss_events(job_dir)}  # a resumed run rewrote the steps it redid
    points = [(step, value) for step, value in sorted(last.items()) if math.isfinite(value)]
    return [s for s, _ in points], [v for _, v in points]


def load_steps(run_dir: str | os.PathLike):
    """One run's (or sweep job's) loss at every optimizer step as a pandas DataFrame with
    columns ``step`` and ``loss``, for a notebook. Read from its TensorBoard events, so it works
    whatever ``logger=`` was; NaN and inf stay in (a diverged run shows where). A resumed run
    rewrites the steps it redid: the last value of each step is kept."""
    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise ValueError(
            f"{run_dir} is not a run folder (no {METRICS_FILE}); pass outputs/<date>/<time> or a sweep's job folder."
        )
    frame = pd.DataFrame(
        [(e.step, e.value, e.wall_time) for e in _loss_events(run_dir)], columns=["step", "loss", "wall_time"]
    )
    frame = frame.sort_values("wall_time", kind="stable").drop_duplicates("step", keep="last")
    return frame.drop(columns="wall_time").sort_values("step").reset_index(drop=True)


def labels_of(rows: list[dict]) -> list[str]:
    """Legend labels: the overrides that differ between jobs (all of them if none differ)."""
    shared = set.intersection(*(set(r["override_list"]) for r in rows)) if len(rows) > 1 else set()
    return [" ".join(o for o in r["override_list"] if o not in shared) or r["job"] for r in rows]


def fmt(value, key: str) -> str:
    if value is None:
        return ""
    if key in ("best_val_acc", "test_acc"):
        return f"{value:.4f}"
    if key == "final_train_loss":
        return f"{value:.4g}"
    if key == "train_time_s":
        return f"{value:.1f}"
    return str(value)


def write_tables(rows: list[dict], sweep_dir: Path) -> None:
    with replaced_atomically(sweep_dir / "summary.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = (fmt(row[key], key).replace("|", "\\|") for key in COLUMNS)
        lines.append("| " + " | ".join(cells) + " |")
    with replaced_atomically(sweep_dir / "summary.md") as tmp:
        tmp.write_text(f"# Sweep {sweep_dir}\n\n" + "\n".join(lines) + "\n")


def print_table(rows: list[dict], labels: list[str], sweep_dir: Path) -> None:
    """The summary in the terminal; jobs named by the overrides that differ between them."""
    table = Table(title=f"sweep {sweep_dir}")
    table.add_column("job (overrides that differ)", overflow="fold")
    shown = [key for key in COLUMNS[2:] if any(row[key] is not None for row in rows)]
    for key in shown:
        text = key in ("status", "error")
        table.add_column(key, justify="left" if text else "right", overflow="fold")
    for row, label in zip(rows, labels, strict=True):
        style = {"diverged": "yellow", "failed": "red"}.get(row["status"])
        table.add_row(label, *(fmt(row[key], key) for key in shown), style=style)
    Console(width=None if sys.stdout.isatty() else 160).print(table)  # logs: no 80-column cut


def write_report(sweep_dir: str | os.PathLike, show: bool = True, resolve: float | None = None) -> list[dict]:
    """Write summary.csv, summary.md, curves.png and time.png into ``sweep_dir``; return rows.

    Per job; or per grid point over its seeds when some point ran more than one seed. ``resolve``
    (accuracy points, replicated sweeps only): print the seeds a difference that size takes.
    """
    sweep_dir = Path(sweep_dir)
    rows = rows_of(sweep_dir)
    jobs = frame_of(rows)
    if replicates.is_replicated(jobs):
        replicates_report.write_report(jobs, sweep_dir, lambda d: thin(*step_losses(d)), show, resolve)
        return _say_unfinished(rows, sweep_dir, show)
    if resolve is not None:
        raise ValueError(
            f"--resolve needs a sweep whose points ran several seeds, and every point of {sweep_dir} ran "
            "one; run the grid with 'seed=range(3)' or more first."
        )
    rows.sort(key=lambda r: -r["best_val_acc"] if r["best_val_acc"] is not None else math.inf)
    labels = labels_of(rows)
    write_tables(rows, sweep_dir)
    plot_job_curves(rows, labels, sweep_dir, step_losses)
    plot_job_times(rows, labels, sweep_dir)
    if show:
        print_table(rows, labels, sweep_dir)
    return _say_unfinished(rows, sweep_dir, show)


def _say_unfinished(rows: list[dict], sweep_dir: Path, show: bool) -> list[dict]:
    """Under the table: the jobs left ``running`` or ``interrupted``, and how to resume them."""
    line = unfinished_line(rows, sweep_dir)
    if show and line:
        print(line, file=sys.stderr)
    return rows
