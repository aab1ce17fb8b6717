"""Layering rules from STYLE.md, checked on the source (parsed with ast, not grepped)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE_FILES = sorted((REPO / "core").rglob("*.py"))
PAGE_FILES = sorted((REPO / "dashboard" / "views").glob("*.py"))


def imported_modules(source: str) -> set[str]:
    """Top-level package names imported anywhere in `source` (including inside functions)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and _is_dynamic_import(node) and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                names.add(arg.value.split(".")[0])
    return names


def _is_dynamic_import(call: ast.Call) -> bool:
    func = call.func
    return (isinstance(func, ast.Name) and func.id == "__import__") or (
        isinstance(func, ast.Attribute) and func.attr == "import_module")


def test_the_checker_sees_every_import_form():
    source = (
        "import os\nimport streamlit as st\nfrom sklearn.svm import SVC\n"
        "def f():\n    import torch.nn\n    from . import sibling\n"
        "importlib.import_module('plotly.express')\n__import__('pandas')\n"
    )
    assert imported_modules(source) == {"os", "streamlit", "sklearn", "torch", "plotly", "pandas"}


def test_core_exists():
    names = {p.name for p in CORE_FILES}
    assert {"data.py", "features.py", "classifiers.py", "cli.py", "experiment.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_core_never_imports_streamlit(path):
    assert "streamlit" not in imported_modules(path.read_text())


def test_pages_do_not_train_models():
    """Pages call core; they import neither scikit-learn nor torch themselves."""
    offenders = {str(p.relative_to(REPO)): sorted(imported_modules(p.read_text()) & {"sklearn", "torch"})
                 for p in PAGE_FILES}
    assert {path: mods for path, mods in offenders.items() if mods} == {}


@pytest.mark.slow
def test_importing_all_of_core_loads_no_streamlit():
    """Transitive check: import every core module in a fresh interpreter; streamlit must stay unloaded."""
    import subprocess
    import sys

    modules = sorted({".".join(p.relative_to(REPO).with_suffix("").parts) for p in CORE_FILES
                      if p.name != "__main__.py"})
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n" \
           "print(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
