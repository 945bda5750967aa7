"""Exit codes of the commands, and SIGTERM handled as Ctrl-C is (``Terminated``)."""

from __future__ import annotations

# Exit codes of a single run (docs/reliability.md). A --multirun exits 0 whatever its jobs did
# (the report lists them), except when it is interrupted.
EXIT_ERROR = 1  # bad input (one "error: ..." line) or a failed run
EXIT_DIVERGED = 3  # NaN/inf loss: metrics.json says status "diverged" and the step
EXIT_INTERRUPTED = {"SIGINT": 130, "SIGTERM": 143}  # 128 + the signal's number, as shells do


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by ``raise_terminated`` (the commands' handler) so that it is handled like Ctrl-C."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()
