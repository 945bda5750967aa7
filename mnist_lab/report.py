"""Write a sweep's report again: ``python -m mnist_lab.report <sweep dir>``.

Every ``--multirun`` writes it at its end; this rebuilds ``summary.csv``, ``summary.md``,
``curves.png`` and ``time.png`` from the job folders (``mnist_lab.analysis.summary``) and
prints the table. In a notebook, ``load(sweep_dir)`` gives the jobs as a pandas DataFrame and
``load_steps(run_dir)`` a run's loss at every step.
"""

from __future__ import annotations

import sys

from mnist_lab.analysis.summary import load, load_steps, write_report

__all__ = ["load", "load_steps", "main"]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m mnist_lab.report <sweep dir>, e.g. outputs/multirun/<date>/<time>")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        write_report(argv[0])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote summary.csv, summary.md, curves.png and time.png into {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
