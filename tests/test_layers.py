"""Layering rules from STYLE.md, checked on the source (parsed with ast, not grepped)."""
import ast
import importlib.util
import os
import pkgutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE_FILES = sorted((REPO / "core").rglob("*.py"))
DASHBOARD_FILES = [REPO / "app.py", *sorted((REPO / "dashboard").rglob("*.py"))]
PRODUCT_FILES = DASHBOARD_FILES + CORE_FILES
PUBLIC_STREAMLIT = {"streamlit", "streamlit.column_config", "streamlit.components.v1"}  # documented for apps
STREAMLIT_SUBMODULES = {module.name for module in pkgutil.iter_modules(
    importlib.util.find_spec("streamlit").submodule_search_locations)}
NOT_SOURCE = {".git", ".venv", "cache", "artifacts", "__pycache__", ".pytest_cache"}


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


def streamlit_modules(source: str) -> set[str]:
    """Streamlit modules imported in `source`, dotted; `from streamlit import runtime` counts as streamlit.runtime."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.split(".")[0] == "streamlit")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "streamlit":
            names.add(node.module)
            if node.module == "streamlit":
                names.update(f"streamlit.{a.name}" for a in node.names if a.name in STREAMLIT_SUBMODULES)
    return names


def private_attributes(source: str) -> list[str]:
    """Every `x._name` read of another object's private attribute (an object's own, `self._x`, is fine)."""
    return [ast.unparse(node) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.endswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))]


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


def test_the_checkers_see_streamlit_internals_and_private_attributes():
    source = ("import streamlit as st\nimport streamlit.components.v1\nfrom streamlit import runtime, column_config\n"
              "from streamlit.runtime.pages_manager import PagesManager\n"
              "def f(self):\n"
              "    return self._lock, st.session_state._state, PagesManager.uses_pages_directory, x.__dict__\n")
    assert streamlit_modules(source) - PUBLIC_STREAMLIT == {"streamlit.runtime", "streamlit.runtime.pages_manager"}
    assert private_attributes(source) == ["st.session_state._state"]


def test_core_exists():
    names = {p.name for p in CORE_FILES}
    assert {"data.py", "features.py", "classifiers.py", "cli.py", "experiment.py"} <= names


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_core_never_imports_streamlit(path):
    assert "streamlit" not in imported_modules(path.read_text())


def test_the_dashboard_does_not_train_models():
    """app.py and the dashboard call core; they import neither scikit-learn nor torch themselves."""
    offenders = {str(p.relative_to(REPO)): sorted(imported_modules(p.read_text()) & {"sklearn", "torch"})
                 for p in DASHBOARD_FILES}
    assert {path: mods for path, mods in offenders.items() if mods} == {}


@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_product_module_imports_streamlit_internals(path):
    """Internals change without notice between releases (the old PagesManager write reached into one)."""
    assert streamlit_modules(path.read_text()) <= PUBLIC_STREAMLIT


@pytest.mark.parametrize("path", PRODUCT_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_product_module_names_private_attributes(path):
    assert private_attributes(path.read_text()) == []


def test_no_folder_is_named_pages():
    """Streamlit takes `pages/` beside the entry file for a legacy multipage app (file names as the menu)."""
    found = []
    for folder, subfolders, _ in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in NOT_SOURCE]
        found += [str(Path(folder, name).relative_to(REPO)) for name in subfolders if name == "pages"]
    assert found == []


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
