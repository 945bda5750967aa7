"""Imports go one way: no module of the package imports, even for a type hint, a module that
imports it back; and the reading tools (report, the error sentences) start without Lightning."""

from __future__ import annotations

import ast
import subprocess
import sys

from tests.conftest import ROOT

PACKAGE = ROOT / "mnist_lab"


def imports_of(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mnist_lab"):
            names = [node.module.removeprefix("mnist_lab").lstrip(".")] if node.module != "mnist_lab" else []
            names += [alias.name for alias in node.names] if node.module == "mnist_lab" else []
            found.update(name for name in names if name)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("mnist_lab.") for a in node.names if a.name.startswith("mnist_lab."))
    return found


def test_no_import_circle():
    graph = {path.stem: imports_of(path.stem) for path in PACKAGE.glob("*.py")}

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


def test_the_report_and_the_error_sentences_start_without_lightning():
    code = (
        "import sys, mnist_lab.report, mnist_lab.hydra_errors; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_packed_launcher_plugin_imports_no_torch():
    """Hydra imports every module of hydra_plugins when any Hydra app starts (evaluate too)."""
    code = (
        "import sys, hydra_plugins.mnist_lab_packed_launcher.packed_launcher; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'mnist_lab'}))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
