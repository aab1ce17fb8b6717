"""One builder of run records for tests that need a run without training one."""
from core.metrics import evaluate
from core.records import RunRecord


def record_json(run_id="r1", approach="svm", class_weight="balanced", y_true=(0, 1), y_pred=(0, 1),
                classes=("cat", "dog"), train_counts=None, dataset=None, **fields) -> dict:
    """A complete record's JSON: test labels `y_true` predicted as `y_pred`; `dataset` entries and `fields`
    override."""
    classes = list(classes)
    train_counts = list(train_counts or [4] * len(classes))
    scores = evaluate(list(y_true), list(y_pred), classes, train_counts)
    summary = {"root": "data", "classes": classes, "train_counts": train_counts,
               "test_counts": [list(y_true).count(i) for i in range(len(classes))], **(dataset or {})}
    return {"created": "2026-11-26T16:30:12+00:00", "run_id": run_id, "approach": approach,
            "class_weight": class_weight, "class_weights": [1.0] * len(classes), **scores, "fit_seconds": 0.5,
            "predict_seconds": 0.01, "history": [], "dataset": summary, **fields}


def make_record(**kwargs) -> RunRecord:
    """`record_json(**kwargs)` as a RunRecord (numpy values allowed)."""
    return RunRecord.build(record_json(**kwargs))
