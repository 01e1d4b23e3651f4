"""The house rules of the package (docs/architecture.md): layers and no import cycles, checked
by import-linter (`make lint`), no import of another module's private names, modules small
enough to read in one sitting, and a short `fit_one`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from ecg_experiments.config import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "ecg_experiments"
MODULES = sorted(PACKAGE.rglob("*.py"))
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PROJECT_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_layer_contract_holds_and_covers_every_module() -> None:
    result = subprocess.run([str(Path(sys.executable).parent / "lint-imports")],
                            cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "0 broken" in result.stdout
    config = (PROJECT_ROOT / ".importlinter").read_text()
    assert "exhaustive = true" in config  # a module left out of the layers breaks it
    # import cycles between the modules of any package: the acyclic_siblings contract
    assert "type = acyclic_siblings" in config


def test_no_module_imports_a_private_name_of_another() -> None:
    found = []
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                    "ecg_experiments"):
                found += [f"{_module_name(path)}: from {node.module} import {a.name}"
                          for a in node.names if a.name.startswith("_")]
    assert not found, found


@pytest.mark.parametrize("path", MODULES, ids=_module_name)
def test_a_module_reads_in_one_sitting(path: Path) -> None:
    """At most MAX_LINES lines, unless its docstring says why it is longer."""
    lines = len(path.read_text().splitlines())
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert lines <= MAX_LINES or "longer than 400 lines because" in docstring, (
        f"{path.relative_to(PROJECT_ROOT)}: {lines} lines")


def test_fit_one_is_short() -> None:
    source = (PACKAGE / "runs" / "fit.py").read_text()
    [fit_one] = [n for n in ast.parse(source).body
                 if isinstance(n, ast.FunctionDef) and n.name == "fit_one"]
    assert fit_one.end_lineno - fit_one.lineno + 1 < 60
