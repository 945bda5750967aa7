"""Imports go one way: no module of the package imports, even for a type hint, a module that
imports it back; and the reading tools (report, predict, the error sentences) start without Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGE = ROOT / "mnist_lab"
# The commands: they run, print and exit; nothing of the package imports them (what they share
# lives below them).
COMMANDS = {"train", "evaluate", "predict", "report", "lab_check", "data.__main__"}


def module_names() -> list[str]:
    """Every module of the package, dotted below ``mnist_lab`` (``packed.pack``, ``data``)."""
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return [name for name in names if name]


def imports_of(module: str) -> set[str]:
    """The package's modules that ``module`` imports (``from mnist_lab.x import y`` counts ``x.y``
    when ``x.y`` is a module, else ``x``)."""
    known = set(module_names())
    path = PACKAGE / (module.replace(".", "/") + ".py")
    if not path.exists():
        path = PACKAGE / module.replace(".", "/") / "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_lab"):
            base = node.module.removeprefix("mnist_lab").lstrip(".")
            for alias in node.names:
                name = f"{base}.{alias.name}" if base else alias.name
                found.add(name if name in known else base)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("mnist_lab.") for a in node.names if a.name.startswith("mnist_lab."))
    return {name for name in found if name}


def test_no_import_circle():
    graph = {module: imports_of(module) for module in module_names()}

    def circle_from(module: str, path: list[str]) -> list[str] | None:
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                return [*path[path.index(imported) :], imported]
            found = circle_from(imported, [*path, imported])
            if found:
                return found
        return None

    for module in sorted(graph):
        assert circle_from(module, [module]) is None, " -> ".join(circle_from(module, [module]))


def test_no_module_imports_a_command():
    for module in module_names():
        commands = imports_of(module) & COMMANDS
        assert not commands, f"mnist_lab.{module} imports the command(s) {sorted(commands)}"


def test_the_report_predict_and_the_error_sentences_start_without_lightning():
    """Lightning's import, and torchmetrics' with it, is most of a command's start-up
    (docs/performance.md, *A command's start-up*)."""
    code = (
        "import sys, mnist_lab.report, mnist_lab.predict, mnist_lab.cli.hydra_errors; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'torchmetrics'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_report_starts_without_torch():
    """It reads records and event files (tracking.event_files): torch's import is not its work."""
    code = "import sys, mnist_lab.report; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_packed_launcher_plugin_imports_no_torch():
    """Hydra imports every module of hydra_plugins when any Hydra app starts (evaluate too)."""
    code = (
        "import sys, hydra_plugins.mnist_lab_packed_launcher.packed_launcher; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'mnist_lab'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
