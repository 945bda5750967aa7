"""Every command leaves its exit to skip the garbage collector's last pass (mnist_lab/cli/quick_exit.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# every module that runs as a command: ``python -m mnist_lab.<name>`` (a package's: its __main__)
COMMANDS = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__main__")
    for path in (ROOT / "mnist_lab").rglob("*.py")
    if 'if __name__ == "__main__":' in path.read_text()
)

# Runs each command's ``--help`` as ``python -m`` would, in one process, recording which of them
# asked for the quick exit; a handler registered before them all runs after theirs (atexit: last
# in, first out) and prints whether the collector was frozen by then.
PROBE = """
import atexit, gc, runpy, sys
atexit.register(lambda: print("frozen at exit:", gc.get_freeze_count() > 0))
import mnist_lab.cli.quick_exit as quick_exit
asked, real = [], quick_exit.skip_final_collection
quick_exit.skip_final_collection = lambda: (asked.append(command), real())
for command in sys.argv[1:]:
    sys.argv = [command, "--help"]
    try:
        runpy.run_module(command, run_name="__main__", alter_sys=True)
    except SystemExit:
        pass
print("asked:", " ".join(asked))
"""


def test_every_command_exits_with_the_collector_frozen(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *COMMANDS], cwd=tmp_path, capture_output=True, text=True, timeout=300, check=True
    )
    lines = done.stdout.splitlines()
    assert "usage: python -m mnist_lab.data" in done.stdout  # --help is not taken for a data dir
    assert len(COMMANDS) >= 6
    assert lines[-2] == "asked: " + " ".join(COMMANDS), done.stdout[-2000:]
    assert lines[-1] == "frozen at exit: True"
