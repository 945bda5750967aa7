"""Write a sweep's report again: ``python -m mnist_lab.report <sweep dir> [--resolve 0.1]``.

Every ``--multirun`` writes it at its end; this rebuilds ``summary.csv``, ``summary.md``,
``curves.png`` and ``time.png`` from the job folders (``mnist_lab.analysis.summary``) and
prints the table. ``--resolve 0.1`` (a sweep run with several seeds) adds how many seeds a
0.1-point difference takes. In a notebook, ``load(sweep_dir)`` gives the jobs as a pandas
DataFrame and ``load_steps(run_dir)`` a run's loss at every step.
"""

from __future__ import annotations

import argparse
import sys

from mnist_lab.analysis.summary import load, load_steps, write_report
from mnist_lab.cli.quick_exit import skip_final_collection

__all__ = ["load", "load_steps", "main"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m mnist_lab.report", description="Write a sweep's report.")
    parser.add_argument("sweep_dir", help="the sweep dir, e.g. outputs/multirun/<date>/<time>")
    parser.add_argument(
        "--resolve", type=float, metavar="POINTS", help="also print how many seeds a difference this size (0.1) takes"
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help, or arguments argparse has said what is wrong with
        return int(stop.code or 0)
    if args.resolve is not None and not args.resolve > 0:
        print(
            f"error: --resolve takes a difference in accuracy points above 0, e.g. 0.1; got {args.resolve}.",
            file=sys.stderr,
        )
        return 2
    try:
        write_report(args.sweep_dir, resolve=args.resolve)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote summary.csv, summary.md, curves.png and time.png into {args.sweep_dir}")
    return 0


if __name__ == "__main__":
    skip_final_collection()
    sys.exit(main(sys.argv[1:]))
