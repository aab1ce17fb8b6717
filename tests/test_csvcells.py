"""CSV cells a spreadsheet would run as formulas are escaped in every CSV the tool writes (core.csvcells)."""
import csv
import io
import zipfile

import pandas as pd

from core.csvcells import csv_text, frame_csv, read_csv
from core.bundles import export_bundle_bytes
from core.store import RunStore
from core.sharing import PathNames
from test_store import make_record

FORMULA = '=HYPERLINK("http://evil.example","click")'


def cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def test_formula_cells_are_text_and_read_back_as_written():
    table = pd.DataFrame({"path": [FORMULA, "+1", "-x", "@SUM(A1)", "\tx", "'kept", "cat.png"], "score": range(7)})
    written = cells(frame_csv(table))
    assert [row[0][0] for row in written[1:6]] == ["'"] * 5 and written[6][0] == "''kept"
    assert written[7] == ["cat.png", "6"] and written[2][1] == "1"  # numbers stay numbers
    assert read_csv(io.StringIO(frame_csv(table))).equals(table)
    assert cells(csv_text(["path", "reason"], [(FORMULA, "-broken")]))[1] == ["'" + FORMULA, "'-broken"]


def test_a_viewers_bundle_and_the_stored_run_escape_formula_paths(tmp_path):
    """A dataset folder named like a formula: a viewer's bundle lists test images as `<folder name>/...`."""
    data = tmp_path / FORMULA.replace("/", "_")
    record = make_record(dataset={"root": str(data), "classes": ["cat", "dog"], "train_counts": [4, 2],
                                  "test_counts": [1, 1]})
    predictions = pd.DataFrame({"path": [str(data / "a.png")], "y_true": [0], "y_pred": [0]})
    store = RunStore(tmp_path / "runs")
    run_id = store.save(record, predictions=predictions)
    assert store.load_predictions(run_id).equals(predictions)
    bundle = export_bundle_bytes(store, [run_id], PathNames(data, tmp_path / "cache").bundle_run)
    with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
        shown = cells(zf.read(f"{run_id}/predictions.csv").decode())
    assert shown[1][0].startswith("'=HYPERLINK")
