"""The typed run record (core.records): old runs load unchanged, every key is declared, the engine has no
import circle."""
import ast
import dataclasses
import json
import zipfile
from pathlib import Path

import pytest

from core.bundles import import_bundle
from core.errors import RunStoreError
from core.records import ClassRow, RunRecord, optional
from core.storage import to_json_text
from core.store import RunStore

from builders import make_record, record_json

ROOT = Path(__file__).resolve().parents[1]
OLD = ROOT / "tests" / "fixtures" / "main-7b63ebb"  # stored by main before RunRecord (see its README)
OLD_RUN = "20261205-091226-svm-balanced-offsets-69f5bbd2"
OLD_BUNDLE_RUNS = [OLD_RUN, "20261205-091226-head-tau-d65f4163"]


def test_a_run_stored_before_records_loads_and_writes_back_byte_for_byte(tmp_path):
    raw = (OLD / "runs" / OLD_RUN / "record.json").read_text()
    record = RunStore(OLD / "runs").load(OLD_RUN)
    assert to_json_text(record.to_json()) == raw  # same keys, same order, same values
    assert record.approach == "svm" and record.remedy == "balanced+offsets" and len(record.offsets) == 10
    assert record.validation.macro_f1 == pytest.approx(0.578, abs=1e-3)
    assert record.per_class[0].at_bound == 67 and record.svm_model == "SVC (rbf kernel)"
    assert record.interval("accuracy") == (0.76, pytest.approx(0.8667, abs=1e-4))


def test_a_bundle_exported_before_records_imports_unchanged(tmp_path):
    store = RunStore(tmp_path / "runs")
    assert import_bundle(store, OLD / "bundle.zip") == OLD_BUNDLE_RUNS
    with zipfile.ZipFile(OLD / "bundle.zip") as zf:
        for run_id in OLD_BUNDLE_RUNS:
            stored = (store.root / run_id / "record.json").read_bytes()
            assert stored == zf.read(f"{run_id}/record.json")
            assert to_json_text(store.load(run_id).to_json()).encode() == stored
    head = store.load(OLD_BUNDLE_RUNS[1])
    assert head.tuned["tau"] == head.tau == 0.75 and head.history[0]["epoch"] == 1


def test_every_key_main_stored_is_declared():
    stored = json.loads((OLD / "runs" / OLD_RUN / "record.json").read_text())
    declared = {f.name for f in dataclasses.fields(RunRecord)}
    assert set(stored) <= declared
    row_keys = {f.metadata.get("key", f.name) for f in dataclasses.fields(ClassRow)}
    assert set(stored["per_class"][0]) <= row_keys


def test_a_record_is_frozen_and_reads_by_attribute_only():
    record = make_record()
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.accuracy = 1.0
    with pytest.raises(TypeError):
        record["accuracy"]  # noqa: B018  (no dict access: an undeclared key cannot be read)
    assert not hasattr(record, "get")


def test_unknown_metric_and_missing_field_say_what_to_do():
    with pytest.raises(RunStoreError, match="unknown metric 'f2'; choose one of: accuracy"):
        make_record().score("f2")
    broken = record_json()
    del broken["per_class"][0]["recall"]
    with pytest.raises(RunStoreError, match="per_class row lacks 'recall'"):
        RunRecord.from_json(broken)


def test_adding_a_field_is_one_typed_line():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Extended(RunRecord):
        calibration_error: float | None = optional()

    plain = Extended.from_json(record_json())
    assert "calibration_error" not in plain.to_json()  # optional fields stay out while None
    scored = Extended.from_json({**record_json(), "calibration_error": 0.05})
    assert scored.calibration_error == 0.05 and scored.to_json()["calibration_error"] == 0.05
    with pytest.raises(RunStoreError, match="'calibration_error' = 'low', expected int or float"):
        Extended.from_json({**record_json(), "calibration_error": "low"})


# ---- the engine's import graph ------------------------------------------------------------------------

def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The core modules `path` imports anywhere (at the top or inside a function), except for type checking."""
    tree = ast.parse(path.read_text())
    skipped = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
               and "TYPE_CHECKING" in ast.unparse(block.test) for stmt in block.body for node in ast.walk(stmt)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return (found & modules) - {_module_name(path)}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (found := visit(target)):
                return found
        state[module] = "done"
        stack.pop()
        return None

    return next((found for module in sorted(graph) if module not in state and (found := visit(module))), None)


def test_the_engine_has_no_import_circle():
    paths = {_module_name(path): path for path in (ROOT / "core").rglob("*.py")}
    graph = {module: _imports(path, set(paths)) for module, path in paths.items()}
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check can fail


def test_storage_records_store_and_bundles_load_without_torch():
    import subprocess
    import sys

    probe = "import sys, core.bundles, core.records; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"


# ---- product code reads records by attribute ----------------------------------------------------------

RECORD_NAMES = {"record", "run", "record_a", "record_b", "chosen", "best", "first"}


def test_product_code_never_reads_a_record_like_a_dict():
    """Types make an undeclared key an AttributeError; this also catches `record["x"]` and `record.get("x")`
    on the names product code gives records, before a page meets it."""
    offenders = []
    for path in [*(ROOT / "core").rglob("*.py"), *(ROOT / "dashboard").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.value if isinstance(node, ast.Subscript) else (
                node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get" else None)
            if target is None:
                continue
            name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
            key = node.slice if isinstance(node, ast.Subscript) else (node.args[0] if node.args else None)
            if name in RECORD_NAMES and isinstance(key, ast.Constant) and isinstance(key.value, str):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert offenders == [], "read run records by attribute (declared in core.records.RunRecord)"
