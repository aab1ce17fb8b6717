"""Tests for core.figures on tiny synthetic inputs."""
import dataclasses
import json

import numpy as np
import plotly.graph_objects as go
import pytest

from core import figures
from core.errors import ConfigError
from core.figures import (
    MAJORITY_COLOR,
    MINORITY_COLOR,
    NEGATIVE_COLOR,
    POSITIVE_COLOR,
    class_distribution_figure,
    clickable_confusion_figure,
    confusion_diff_figure,
    confusion_matrix_figure,
    f1_delta_figure,
    feature_map_figure,
    learning_curve_figure,
    pareto_front,
    per_class_delta_figure,
    per_class_figure,
    tradeoff_figure,
)
from core.metrics import evaluate
from core.records import class_rows
from builders import make_record

CLASSES = ["cat", "dog", "owl"]
LONG_CLASSES = [f"Motopontonerettangolare{i:02d}" for i in range(16)]


@pytest.fixture
def per_class():
    return class_rows(evaluate([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 1], CLASSES, train_counts=[100, 90, 10]))


def _minority_notes(fig):
    return [note.text for note in fig.layout.annotations if "minority" in note.text]


def test_class_distribution_highlights_minority_and_scales_with_classes():
    counts = list(range(10, 170, 10))
    minority = [i < 3 for i in range(16)]
    fig = class_distribution_figure(LONG_CLASSES, counts, counts, minority)
    assert isinstance(fig, go.Figure)
    assert [trace.name for trace in fig.data] == ["Train", "Test"]
    assert list(fig.layout.yaxis.tickvals) == LONG_CLASSES
    assert fig.layout.yaxis.automargin
    assert list(fig.data[0].marker.color[:4]) == [MINORITY_COLOR] * 3 + [MAJORITY_COLOR]
    assert MINORITY_COLOR in fig.layout.yaxis.ticktext[0] and MINORITY_COLOR not in fig.layout.yaxis.ticktext[3]
    assert len(_minority_notes(fig)) == 1
    small = class_distribution_figure(CLASSES, [5, 5, 5], [1, 1, 1], [False] * 3)
    assert fig.layout.height > small.layout.height
    assert _minority_notes(small) == []


def test_class_distribution_rejects_mismatched_lengths():
    with pytest.raises(ConfigError, match="2 train and 3 test counts for 3 classes"):
        class_distribution_figure(CLASSES, [1, 2], [1, 2, 3], [False] * 3)
    with pytest.raises(ConfigError, match="minority has 2 flags"):
        class_distribution_figure(CLASSES, [1, 2, 3], [1, 2, 3], [False, True])


def test_confusion_matrix_counts_and_normalized():
    cm = [[2, 1, 0], [1, 1, 0], [0, 0, 0]]
    counts = confusion_matrix_figure(cm, CLASSES, minority=[False, False, True])
    assert "counts" in counts.layout.title.text
    np.testing.assert_array_equal(counts.data[0].z, cm)
    assert list(counts.layout.xaxis.tickvals) == CLASSES and list(counts.layout.yaxis.tickvals) == CLASSES
    assert counts.layout.xaxis.tickangle == -45
    assert MINORITY_COLOR in counts.layout.xaxis.ticktext[2] and MINORITY_COLOR in counts.layout.yaxis.ticktext[2]
    shares = confusion_matrix_figure(cm, CLASSES, normalize=True)
    assert "row-normalized" in shares.layout.title.text
    np.testing.assert_allclose(np.asarray(shares.data[0].z).sum(axis=1), [1, 1, 0])
    assert "%" in shares.data[0].texttemplate


def test_confusion_matrix_rejects_wrong_shape():
    with pytest.raises(ConfigError, match=r"must be \(3, 3\), got shape \(2, 2\)"):
        confusion_matrix_figure([[1, 0], [0, 1]], CLASSES)


def test_per_class_figure_error_bars_and_labels(per_class):
    fig = per_class_figure(per_class)
    assert [trace.name for trace in fig.data] == ["Precision", "Recall"]
    recall = fig.data[1]
    cat = per_class[0]
    assert recall.error_x.array[0] == pytest.approx(cat.recall_high - cat.recall)
    assert recall.error_x.arrayminus[0] == pytest.approx(cat.recall - cat.recall_low)
    assert fig.data[0].error_x.array[2] == 0  # owl is never predicted: no precision interval
    assert fig.layout.yaxis.ticktext[0] == "cat (n=3)"
    assert "owl (n=1)" in fig.layout.yaxis.ticktext[2] and MINORITY_COLOR in fig.layout.yaxis.ticktext[2]
    assert fig.data[0].marker.color[2] == MINORITY_COLOR
    assert len(_minority_notes(fig)) == 1


def test_learning_curve_has_two_subplots_and_skips_missing_test_values():
    history = [{"epoch": e, "train_loss": 1 / e, "train_acc": 0.5 + e / 10, "test_loss": 1.2 / e,
                "test_acc": 0.4 + e / 10} for e in (1, 2, 3)]
    fig = learning_curve_figure(history)
    assert len(fig.data) == 4
    assert {trace.xaxis for trace in fig.data} == {"x", "x2"}
    assert [trace.showlegend for trace in fig.data] == [True, True, False, False]
    train_only = learning_curve_figure([{"epoch": 1, "train_loss": 0.9, "train_acc": 0.6, "test_loss": None}])
    assert [trace.name for trace in train_only.data] == ["train", "train"]


def test_pareto_front_on_toy_points():
    times = [1.0, 2.0, 3.0, 4.0, 2.0]
    scores = [0.5, 0.4, 0.9, 0.9, 0.6]
    assert pareto_front(times, scores) == [0, 4, 2]
    assert pareto_front([1.0, 1.0], [0.5, 0.5]) == [0, 1]  # identical points do not dominate each other
    assert pareto_front([], []) == []


def test_pareto_front_rejects_mismatched_or_nan_input():
    with pytest.raises(ConfigError, match="equal-length"):
        pareto_front([1.0, 2.0], [0.5])
    with pytest.raises(ConfigError, match="finite"):
        pareto_front([1.0, float("nan")], [0.5, 0.6])


def _run(run_id, approach, accuracy, macro_f1, fit_seconds, class_weight="balanced", **fields):
    return make_record(run_id=run_id, approach=approach, class_weight=class_weight, accuracy=accuracy,
                       macro_f1=macro_f1, fit_seconds=fit_seconds, **fields)


def test_tradeoff_figure_traces_axes_and_front():
    runs = [_run("r1", "svm", 0.80, 0.70, 1.0), _run("r2", "svm", 0.75, 0.72, 5.0, class_weight="custom:<i>x</i>"),
            _run("r3", "finetune", 0.90, 0.85, 100.0)]
    fig = tradeoff_figure(runs)
    assert len(fig.data) == 5  # 2 approaches x 2 metrics + Pareto front
    assert fig.layout.xaxis.type == "log"
    symbols = {trace.name: trace.marker.symbol for trace in fig.data[:4]}
    assert symbols["svm · Accuracy"] == "circle" and symbols["svm · Macro-F1"] == "diamond"
    assert fig.data[0].marker.color == fig.data[1].marker.color != fig.data[2].marker.color
    assert list(fig.data[0].customdata[1]) == ["svm", "custom:&lt;i&gt;x&lt;/i&gt;", "r2"]
    assert "class weight" in fig.data[0].hovertemplate
    front = fig.data[-1]
    assert list(front.x) == [1.0, 100.0] and list(front.y) == [0.80, 0.90]
    assert front.line.shape == "hv"


def test_confusion_diff_is_b_minus_a_centred_on_zero():
    fig = confusion_diff_figure([[2, 2], [0, 4]], [[4, 0], [1, 3]], ["cat", "owl"], "frozen", "finetuned",
                                minority=[False, True])
    heatmap = fig.data[0]
    np.testing.assert_allclose(heatmap.z, [[0.5, -0.5], [0.25, -0.25]])
    assert heatmap.zmid == 0
    assert "finetuned minus frozen" in fig.layout.title.text
    assert MINORITY_COLOR in fig.layout.yaxis.ticktext[1]
    with pytest.raises(ConfigError, match=r"got shape \(3, 3\)"):
        confusion_diff_figure(np.eye(3), np.eye(2), ["cat", "owl"], "A", "B")


def test_f1_delta_colours_sign_and_highlights_minority(per_class):
    better = class_rows(evaluate([0, 0, 0, 1, 1, 2], [0, 0, 0, 0, 1, 2], CLASSES, train_counts=[100, 90, 10]))
    worse_dog = [dataclasses.replace(row, f1=row.f1 - 0.1 * (row.name == "dog")) for row in per_class]
    fig = f1_delta_figure(per_class, better, "A", "B")
    deltas = [b.f1 - a.f1 for a, b in zip(per_class, better)]
    np.testing.assert_allclose(fig.data[0].x, deltas)
    assert list(fig.data[0].marker.color) == [POSITIVE_COLOR] * 3
    assert MINORITY_COLOR in fig.layout.yaxis.ticktext[2]
    assert f1_delta_figure(per_class, worse_dog, "A", "B").data[0].marker.color[1] == NEGATIVE_COLOR


def test_f1_delta_rejects_different_class_lists(per_class):
    with pytest.raises(ConfigError, match="different classes"):
        f1_delta_figure(per_class, per_class[:2], "A", "B")


def test_tradeoff_axis_is_labelled_within_one_decade():
    runs = [_run(f"r{i}", "svm", 0.8, 0.7, s) for i, s in enumerate((0.021, 0.057))]
    axis = figures.tradeoff_figure(runs).layout.xaxis
    assert len(axis.tickvals) >= 2
    assert min(axis.tickvals) <= 0.021 * 1.5 and max(axis.tickvals) >= 0.057 / 1.5
    assert all(text.endswith(" s") for text in axis.ticktext)


def test_confusion_cells_with_zero_are_blank():
    fig = figures.confusion_matrix_figure([[3, 0], [1, 2]], ["cat", "owl"])
    assert [list(row) for row in fig.data[0].text] == [["3", ""], ["1", "2"]]
    shares = figures.confusion_matrix_figure([[3, 0], [1, 3]], ["cat", "owl"], normalize=True)
    assert [list(row) for row in shares.data[0].text] == [["100%", ""], ["25%", "75%"]]


def test_tradeoff_error_bars_are_the_recorded_intervals():
    with_intervals = _run("r1", "svm", 0.80, 0.70, 1.0, accuracy_low=0.75, accuracy_high=0.86,
                          macro_f1_low=0.6, macro_f1_high=0.71)
    old = _run("r2", "svm", 0.70, 0.60, 2.0)  # recorded before intervals: no bar
    fig = tradeoff_figure([with_intervals, old])
    accuracy, macro_f1 = fig.data[0], fig.data[1]
    np.testing.assert_allclose(accuracy.error_y.array, [0.06, 0.0])
    np.testing.assert_allclose(accuracy.error_y.arrayminus, [0.05, 0.0])
    np.testing.assert_allclose(macro_f1.error_y.array, [0.01, 0.0])


def test_f1_delta_marks_classes_with_few_test_images_unreliable():
    y_true = [0] * 10 + [1] * 2 + [2] * 5
    a = class_rows(evaluate(y_true, [0] * 17, CLASSES))
    b = class_rows(evaluate(y_true, y_true, CLASSES))
    fig = f1_delta_figure(a, b, "A", "B")
    ticks = fig.layout.yaxis.ticktext
    assert "unreliable" in ticks[1] and "n=2" in ticks[1]
    assert "unreliable" not in ticks[0] + ticks[2]
    assert list(fig.data[0].marker.opacity) == [1.0, 0.35, 1.0]
    assert any("3 or fewer test images" in note.text for note in fig.layout.annotations)


def test_clickable_confusion_has_one_selectable_marker_per_cell():
    fig = clickable_confusion_figure([[5, 1, 0], [2, 3, 0], [0, 0, 4]], ["a", "b", "c"])
    markers = fig.data[1]
    assert len(markers.x) == 9 and fig.layout.clickmode == "event+select"
    cell = markers.customdata[3]  # row 1 (true b), column 0 (predicted a)
    assert list(cell) == [1, 0, 2] and (markers.y[3], markers.x[3]) == ("b", "a")


def test_feature_map_marks_train_correct_and_misclassified():
    fig = feature_map_figure([[0, 0], [1, 0], [2, 0], [3, 0]], [0, 0, 1, 1], ["cat", "owl"],
                             is_test=[False, True, True, False], predicted=[-1, 0, 0, -1],
                             names=["a.png", "b.png", "c.png", "d.png"], minority=[False, True])
    cat, owl = fig.data[0], fig.data[1]
    assert list(cat.marker.symbol) == ["circle", "diamond"] and list(owl.marker.symbol) == ["x", "circle"]
    assert [row[0] for row in owl.customdata] == [2, 3] and owl.customdata[0][3] == "cat"
    assert "minority" in owl.name
    with pytest.raises(ConfigError, match="same images"):
        feature_map_figure([[0, 0]], [0, 1], ["cat", "owl"], is_test=[False], predicted=[-1], names=["a"])


def test_per_class_delta_figure_shows_three_metrics():
    a = class_rows(evaluate([0, 0, 1, 1], [0, 0, 0, 0], ["cat", "owl"]))
    b = class_rows(evaluate([0, 0, 1, 1], [0, 0, 1, 0], ["cat", "owl"]))
    fig = per_class_delta_figure(a, b, "start", "tuned")
    assert [trace.name for trace in fig.data] == ["Δ precision", "Δ recall", "Δ f1"]
    assert fig.data[1].x[1] == pytest.approx(0.5)


# ---- names are text, never markup ------------------------------------------------------------------

LINK = '<a href="http://evil.example">cat</a>'
STYLED = '<span style="font-size:60px;color:red">dog</span>'
MARKUP_CLASSES = [LINK, STYLED, "owl<br>"]


def figure_strings(fig) -> list[str]:
    """Every string in the figure's JSON (what plotly.js receives and renders as pseudo-HTML)."""
    found = []

    def walk(value):
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(json.loads(fig.to_json()))
    return found


def markup_figures():
    per_class = class_rows(evaluate([0, 0, 0, 1, 1, 2], [0, 0, 1, 1, 0, 1], MARKUP_CLASSES,
                         train_counts=[100, 90, 10]))
    cm = [[2, 1, 0], [1, 1, 0], [0, 1, 0]]
    run = _run("r1", LINK, 0.5, 0.4, 1.0, class_weight=STYLED)
    return {
        "distribution": class_distribution_figure(MARKUP_CLASSES, [100, 90, 10], [3, 2, 1], [False, False, True]),
        "confusion": confusion_matrix_figure(cm, MARKUP_CLASSES, minority=[False, False, True]),
        "clickable confusion": clickable_confusion_figure(cm, MARKUP_CLASSES),
        "per class": per_class_figure(per_class),
        "tradeoff": tradeoff_figure([run]),
        "confusion diff": confusion_diff_figure(cm, cm, MARKUP_CLASSES, "A", LINK),
        "f1 delta": f1_delta_figure(per_class, per_class, "A", "B"),
        "per-class delta": per_class_delta_figure(per_class, per_class, "start", "tuned"),
        "feature map": feature_map_figure([[0, 0], [1, 1], [2, 2]], [0, 1, 2], MARKUP_CLASSES,
                                          is_test=[False, True, True], predicted=[-1, 0, 2],
                                          names=[LINK, "b.png", STYLED], minority=[False, False, True]),
    }


@pytest.mark.parametrize("name", list(markup_figures()))
def test_markup_in_names_reaches_no_figure(name):
    """Plotly renders <a href> links and styles found in any label; a class named so showed a live link."""
    strings = figure_strings(markup_figures()[name])
    assert not [text for text in strings if "<a " in text or "<span style=\"font-size" in text or "owl<br>" in text]
    assert any("&lt;a href=" in text for text in strings), "the escaped name is still shown"
