"""What ``--multirun`` adds to single runs: job folders named by their overrides, and a report.

``conf/train.yaml`` names each job's folder ``${job_dirname:${hydra.job.num},...}`` and lists
``SweepReport`` under ``hydra.callbacks``; its last line says where the sweep's time went
(``cli.sweep_clock``). Importing this module registers the resolver; every
process that runs jobs imports it (train.py does, and the launchers that ship jobs to other
processes pickle the callbacks, which imports this module there).
"""

from __future__ import annotations

import re
import shlex
import sys
from collections import Counter
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from mnist_lab.cli import sweep_clock, sweep_lock, sweep_start

MAX_NAME = 200  # folder names stay well under the usual 255-byte limit


def job_dirname(num: int, override_dirname: str) -> str:
    """Job 3, ``model.hidden=[64,32],optimizer.lr=0.1`` -> ``3_model.hidden=64-32,optimizer.lr=0.1``

    List brackets go (commas inside a list become "-", an empty list is "none") and anything
    outside ``[A-Za-z0-9_.=,+-]`` becomes "_", so the name is one path component a shell can
    type. Long names are cut; the job number in front keeps them unique.
    """
    name = override_dirname
    while (unbracketed := re.sub(r"\[([^\[\]]*)\]", _flatten_list, name)) != name:
        name = unbracketed
    name = re.sub(r"[^\w.=,+-]", "_", name, flags=re.ASCII)
    return f"{num}_{name}"[:MAX_NAME] if name else str(num)


def _flatten_list(match: re.Match) -> str:
    return match.group(1).replace(",", "-") or "none"


OmegaConf.register_new_resolver("job_dirname", job_dirname, replace=True)


class SweepReport(Callback):
    """At the start of a multirun: refuse a sweep dir that holds another sweep. At the end:
    write the sweep report and say how many jobs did not finish."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        # Runs before the sweeper writes multirun.yaml. Hydra turns a callback's exception
        # into a warning, so exit here (SystemExit is not an Exception).
        sweep_clock.start_sweep()
        sweep_dir = Path(config.hydra.sweep.dir)
        if not (sweep_dir / "multirun.yaml").exists():
            sweep_start.note_fresh(sweep_dir)  # a sweep that ends before any job leaves no multirun.yaml
        if (sweep_dir / "multirun.yaml").exists() and config.get("ckpt_path") != "last":
            holder = sweep_lock.running_sweep(sweep_dir)
            if holder is not None:  # a resume would be refused too: say what is going on
                print(
                    f"error: another sweep is running in {sweep_dir} ({holder}); give this sweep its own "
                    "hydra.sweep.dir, or wait for that one to end.",
                    file=sys.stderr,
                )
                sys.exit(1)
            print(
                f"error: {sweep_dir} already holds a sweep (its multirun.yaml); add ckpt_path=last "
                "to resume it, or give this sweep its own hydra.sweep.dir.",
                file=sys.stderr,
            )
            sys.exit(1)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from mnist_lab.analysis import summary as report  # here: keeps its imports out of every run's start-up
        from mnist_lab.tracking.trackers import log_sweep_report

        sweep_dir = Path(config.hydra.sweep.dir)
        with sweep_clock.timed("report"):
            rows = write_report_or_say_why(report, sweep_dir)
            try:
                log_sweep_report(config.get("logger"), sweep_dir, [sweep_dir / name for name in report.REPORT_FILES])
            except Exception as error:  # noqa: BLE001 - the report is written; the tracker is extra
                print(f"warning: the report did not reach MLflow: {error}".splitlines()[0], file=sys.stderr)
        counts = Counter(row["status"] for row in rows)
        others = ", ".join(
            f"{n} {status}" for status, n in sorted(counts.items()) if status not in ("ok", "diverged", "failed")
        )
        print(
            f"sweep: {len(rows)} jobs, {counts['ok']} ok, {counts['diverged']} diverged, "
            f"{counts['failed']} failed{', ' + others if others else ''} in {sweep_clock.breakdown()}; "
            f"report in {sweep_dir}/summary.md"
        )
        sweep_lock.release()


def write_report_or_say_why(report, sweep_dir: Path) -> list[dict]:
    """``report.write_report``; a signal or a failure while it writes (every job is recorded by
    then) is one line that says so and how to write the report again, with the signal's exit
    code, not Hydra's warning and exit 0, nor the start-up's "nothing was written"."""
    from mnist_lab.cli.console import first_line
    from mnist_lab.cli.exit_codes import EXIT_INTERRUPTED, Terminated

    again = f"python -m mnist_lab.report {shlex.quote(str(sweep_dir))}"
    try:
        return report.write_report(sweep_dir)
    except KeyboardInterrupt as stop:
        name = "SIGTERM" if isinstance(stop, Terminated) else "SIGINT"
        words = "SIGTERM" if name == "SIGTERM" else "Ctrl-C"
        print(
            f"interrupted ({words}) while the sweep report was written (every job is recorded); {again}",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERRUPTED[name])
    except Exception as error:  # noqa: BLE001 - a full disk, say: Hydra would make it a warning and exit 0
        print(f"error: the sweep report was not written ({first_line(error)}); once fixed: {again}", file=sys.stderr)
        sys.exit(1)
