"""A Ctrl-C that no command code handles gets one line, not a traceback.

The commands import torch and Lightning (seconds) and compose the config before they run; a
Ctrl-C there (or during ``evaluate``) reaches Python's top level, which would print some 40
lines of import machinery. Imported first by each command; Python still exits with 130 (it
re-raises SIGINT after the hook). Nothing has been written by then: a training run records its
own interruption once it has claimed its dir, and ``evaluate`` writes its figure atomically.
"""

from __future__ import annotations

import sys

_python_hook = sys.excepthook


def _one_line_for_ctrl_c(kind, value, traceback) -> None:
    if issubclass(kind, KeyboardInterrupt):
        print("interrupted (Ctrl-C); nothing was written.", file=sys.stderr)
        return
    _python_hook(kind, value, traceback)


sys.excepthook = _one_line_for_ctrl_c
