"""Does a study reproduce its lab? ``python -m mnist_lab.lab_check <sweep dir> [<sweep dir> ...]``

The labs' own numbers (``LAB_NUMBERS``, quoted in docs/studies.md with where each comes from)
against the sweeps given: for each lab number that a sweep ran (finished jobs with
``experiment=<study>``, the point's overrides and no other override but the seed), ours over
the seeds (mean ± std, 95 % t-interval, ``replicates.describe``), ours minus the lab's with its
95 % interval and the t-test's p Holm-adjusted over the lab numbers compared in one call (the
sweep report's machinery, ``findings``, with the lab's number as a side without spread), and the
verdict:

- *reproduced*: no difference found (Holm p >= 0.05), and the interval of ours minus the lab's
  lies within one point (0.01) either way;
- *not resolved by n seeds*: no difference found, but the interval reaches past one point: these
  seeds cannot tell;
- *within 1 point*: a difference is found, and ours lies less than one point from the lab's.
  Every lab leaves part of its set-up unsaid (initialization at least; each study's base file
  lists what we inferred), so a small offset is not read as a failure;
- *not reproduced*: a difference of a point or more is found;
- *one seed*: a single job has no interval: no verdict.

Where our seeds are far from normal (Shapiro–Wilk), the row adds their median and range and a
bootstrap interval of the difference.

Prints a Markdown table, one row per lab number found, to paste into docs/studies.md.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import pandas as pd

from mnist_lab.analysis import findings
from mnist_lab.analysis.replicates import describe
from mnist_lab.analysis.summary import load
from mnist_lab.cli.quick_exit import skip_final_collection

WITHIN = 0.01  # one point of accuracy


@dataclass(frozen=True)
class LabNumber:
    lab: str
    study: str
    what: str  # the row's name in the table
    metric: str  # our column it compares with: best_val_acc or test_acc
    value: float
    point: dict = field(default_factory=dict)  # the overrides that select the jobs


# trainer.max_epochs=14 '~callbacks.checkpoint': a run that tests its weights after epoch 14.
LAST_WEIGHTS_AFTER_14 = {"trainer.max_epochs": 14, "callbacks.checkpoint": None}

# Lab 003 prints val accuracy after each epoch: its best epoch, as our best_val_acc. Labs 000
# (section 3), 001 (val), 002 and 004 report one final accuracy.
LAB_NUMBERS = (
    LabNumber("003", "mlp_loss", "MSE on raw outputs", "best_val_acc", 0.9310, {"loss": "mse_logits"}),
    LabNumber("003", "mlp_loss", "L1 on raw outputs", "best_val_acc", 0.1102, {"loss": "l1_logits"}),
    LabNumber("003", "mlp_loss", "CE", "best_val_acc", 0.9681, {"loss": "ce"}),
    LabNumber("003", "mlp_lr", "lr 0.001", "best_val_acc", 0.9772, {"optimizer.lr": 0.001}),
    LabNumber("003", "mlp_lr", "lr 0.01", "best_val_acc", 0.9698, {"optimizer.lr": 0.01}),
    LabNumber("003", "mlp_lr", "lr 0.1", "best_val_acc", 0.4158, {"optimizer.lr": 0.1}),
    LabNumber("003", "mlp_batch", "batch 16", "best_val_acc", 0.9685, {"data.batch_size": 16}),
    LabNumber("003", "mlp_batch", "batch 64", "best_val_acc", 0.9664, {"data.batch_size": 64}),
    LabNumber("003", "mlp_batch", "batch 256", "best_val_acc", 0.9657, {"data.batch_size": 256}),
    LabNumber("003", "mlp_depth", "1 hidden layer", "best_val_acc", 0.9665, {"model.hidden": (128,)}),
    LabNumber("003", "mlp_depth", "2 hidden layers", "best_val_acc", 0.9654, {"model.hidden": (128, 128)}),
    LabNumber("003", "mlp_depth", "3 hidden layers", "best_val_acc", 0.9663, {"model.hidden": (128, 128, 128)}),
    LabNumber("003", "mlp_width", "width 32", "best_val_acc", 0.9576, {"model.hidden": (32,)}),
    LabNumber("003", "mlp_width", "width 64", "best_val_acc", 0.9645, {"model.hidden": (64,)}),
    LabNumber("003", "mlp_width", "width 128", "best_val_acc", 0.9680, {"model.hidden": (128,)}),
    LabNumber("002", "cnn_small_lr", "lr 0.01", "test_acc", 0.9705, {"optimizer.lr": 0.01}),
    LabNumber("002", "cnn_small_lr", "lr 0.001", "test_acc", 0.9157, {"optimizer.lr": 0.001}),
    LabNumber("002", "cnn_small_batch", "batch 64", "test_acc", 0.9655, {"data.batch_size": 64}),
    LabNumber("002", "cnn_small_arch", "2 convs", "test_acc", 0.9718, {"model": "cnn_small_2conv"}),
    LabNumber("004", "softmax_lr", "lr 0.53", "test_acc", 0.9253, {"optimizer.lr": 0.53}),
    LabNumber("004", "softmax_adam", "its own Adam, lr 0.01", "test_acc", 0.9264, {"optimizer.lr": 0.01}),
    LabNumber("001", "mlp4_wide", "784-2352-1568-784-10", "best_val_acc", 0.9728),
    LabNumber("000", "cnn_example", "the pytorch/examples CNN", "test_acc", 0.9941),
    # Lab 000's base network prints test accuracy after every epoch: its 14th, against runs of
    # 14 epochs that test their last weights.
    *(
        LabNumber("000", study, what, "test_acc", value, {**point, **LAST_WEIGHTS_AFTER_14})
        for study, what, value, point in (
            ("mlp512_lr", "lr 1e-4, γ 0.7", 0.5016, {"optimizer.lr": 0.0001, "scheduler.gamma": 0.7}),
            ("mlp512_gamma", "γ 0.85", 0.8915, {"scheduler.gamma": 0.85}),
            ("mlp512_gamma", "γ 0.9", 0.9012, {"scheduler.gamma": 0.9}),
            ("mlp512_lr", "lr 0.01, γ 0.8", 0.9522, {"optimizer.lr": 0.01, "scheduler.gamma": 0.8}),
            ("mlp512_lr", "lr 0.1, γ 0.8", 0.9813, {"optimizer.lr": 0.1, "scheduler.gamma": 0.8}),
        )
    ),
)


def matches(value, wanted) -> bool:
    if isinstance(wanted, float):
        return isinstance(value, int | float) and math.isclose(value, wanted, rel_tol=1e-9)
    return value == wanted


# Where MNIST lives is no part of a set-up (Hydra's job dirnames leave it out too).
NOT_SET_UP = {"data.data_dir"}


def point_keys(point: str) -> set[str]:
    """The override keys of a job's point (its overrides but the seed and NOT_SET_UP), e.g.
    {"experiment", "loss"}."""
    return {override.lstrip("+~").split("=", 1)[0] for override in point.split()} - NOT_SET_UP


def jobs_of(jobs: pd.DataFrame, number: LabNumber) -> pd.DataFrame:
    """The finished jobs (ok or diverged) of ``number``'s study run at exactly its point: the
    study and the point's overrides, nothing else but the seed."""
    keys = {"experiment", *number.point}
    keep = [
        row["status"] in ("ok", "diverged")
        and point_keys(row["point"]) == keys
        and row.get("experiment") == number.study
        and all(matches(row.get(k), v) for k, v in number.point.items())
        for _, row in jobs.iterrows()
    ]
    return jobs[keep]


def verdict(row: dict) -> str:
    """The row's verdict from its difference, interval and Holm p (the rules of the docstring)."""
    if row["n"] < 2:
        return "one seed"
    found = findings.verdict(row["diff"], row["p_holm"], row["n"], row["n"])
    if found not in ("better", "worse"):  # no difference found: do the seeds bound it within a point?
        return "reproduced" if -WITHIN < row["diff_ci_low"] and row["diff_ci_high"] < WITHIN else found
    return "within 1 point" if abs(row["diff"]) < WITHIN else "not reproduced"


def judge(rows: list[dict]) -> list[dict]:
    """Each row (``number`` and our ``n``, ``mean``, ``std``) with ours minus the lab's, its
    interval, Welch's p with the lab's number as a side without spread (the one-sample t-test),
    that p Holm-adjusted over the rows, and the verdict."""
    for row in rows:
        found = findings.welch(row["mean"], row["std"], row["n"], row["number"].value, 0.0, 2)
        row.update({"diff": found["diff"], "diff_ci_low": found["ci_low"], "diff_ci_high": found["ci_high"]})
        row["p"] = found["p"]
    for row, p in zip(rows, findings.holm([row["p"] for row in rows]), strict=True):
        row["p_holm"] = p
        row["verdict"] = verdict(row)
    return rows


def compare(jobs: pd.DataFrame) -> list[dict]:
    """One row per lab number that ``jobs`` ran: the lab's value, ours, the difference and the verdict."""
    rows = []
    for number in LAB_NUMBERS:
        mine = jobs_of(jobs, number)
        if mine.empty:
            continue
        values = mine[number.metric].tolist()
        low, high = findings.bootstrap_difference(values, number.value)
        shape = findings.shape(values)
        rows.append({"number": number, **describe(values), **shape, "bootstrap_low": low, "bootstrap_high": high})
    return judge(rows)


def pt(value: float, sign: str = "") -> str:
    return f"{100 * value:{sign}.2f}"


def markdown(rows: list[dict]) -> str:
    lines = [
        f"| lab | study: point | lab | ours (n seeds) | 95 % interval | ours − lab [95 % interval] "
        f"| p, Holm over {len(rows)} | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        number = row["number"]
        metric = "val" if number.metric == "best_val_acc" else "test"
        ours = f"{pt(row['mean'])}" + (f" ± {pt(row['std'])}" if row["n"] > 1 else "") + f" % ({row['n']})"
        odd = findings.far_from_normal(row.get("shapiro_p", math.nan))
        if odd:
            ours += f"; median {pt(row['median'])}, range {pt(row['min'])}–{pt(row['max'])} (far from normal)"
        interval = f"{pt(row['ci_low'])} – {pt(row['ci_high'])}" if row["n"] > 1 else ""
        diff = ""
        if row["n"] > 1:
            diff = f"{pt(row['diff'], '+')} [{pt(row['diff_ci_low'], '+')}, {pt(row['diff_ci_high'], '+')}]"
            diff += f"; bootstrap [{pt(row['bootstrap_low'], '+')}, {pt(row['bootstrap_high'], '+')}]" if odd else ""
        p = row["p_holm"]
        p_text = "" if math.isnan(p) else "< 0.001" if p < 0.001 else f"{p:.3f}"
        lines.append(
            f"| {number.lab} | `{number.study}`: {number.what} | {pt(number.value)} % {metric} "
            f"| {ours} | {interval} | {diff} | {p_text} "
            f"| {row['verdict']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python -m mnist_lab.lab_check <sweep dir> [<sweep dir> ...]")
        return 0 if argv else 2
    try:
        jobs = pd.concat([load(sweep_dir) for sweep_dir in argv], ignore_index=True)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    rows = compare(jobs)
    if not rows:
        print("error: none of these sweeps ran a study with a lab number (LAB_NUMBERS).", file=sys.stderr)
        return 1
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    skip_final_collection()
    sys.exit(main(sys.argv[1:]))
