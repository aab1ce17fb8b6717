"""Plotly figure builders for class balance, confusion matrices, per-class scores and run trade-offs.

Class names sit on a categorical axis with automargin, so long names stay readable;
figures grow taller with the number of classes. Minority classes always get an orange,
bold tick label (and orange bars where bar colour encodes the class), explained by a note.
Plotly renders a subset of HTML (links, styles) in any text, so every name that reaches a figure
(classes, approaches, weights, files, labels) is escaped first and shows literally.
"""

import html
import itertools

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from core.errors import ConfigError
from core.metric_labels import title
from core.metrics import MINORITY_FRACTION, check_confusion, normalize_confusion
from core.style import CLASS_COLORS, SCORE_HOVER, approach_color

MAJORITY_COLOR = "#1f77b4"  # blue
MINORITY_COLOR = "#ff7f0e"  # orange
POSITIVE_COLOR = "#2ca02c"
NEGATIVE_COLOR = "#d62728"
NEUTRAL_COLOR = "#7f7f7f"
SPLIT_COLORS = {"train": "#2a3f5f", "val": "#17becf", "test": "#9467bd"}
HATCH = "/"  # bar pattern for the second series (test counts, recall)
PX_PER_CLASS = 34
MIN_HEIGHT_PX = 380
MIN_FIT_S = 1e-3  # a log axis cannot show 0 s, so faster fits are drawn here
METRIC_SYMBOLS = {"accuracy": "circle", "macro_f1": "diamond"}  # accuracy-versus-time markers
UNRELIABLE_MAX_TEST = 3  # per-class changes from this few test images are mostly noise
UNRELIABLE_HATCH = "x"


def _text(value) -> str:
    """`value` as plotly text that shows literally (`<a href>` stays text, not a live link).

    >>> _text('<a href="x">cat</a>')
    '&lt;a href="x"&gt;cat&lt;/a&gt;'
    """
    return html.escape(str(value), quote=False)


def _texts(values) -> list[str]:
    return [_text(value) for value in values]


def _minority_flags(minority, n_classes):
    """Return ``minority`` as a list of bools of length ``n_classes``; None means no minority class."""
    if minority is None:
        return [False] * n_classes
    flags = [bool(flag) for flag in minority]
    if len(flags) != n_classes:
        raise ConfigError(
            f"minority has {len(flags)} flags but there are {n_classes} classes; "
            "pass one flag per class (see core.metrics.minority_mask)"
        )
    return flags


def _class_colors(flags):
    """Bar colour per class: orange for minority classes, blue otherwise."""
    return [MINORITY_COLOR if flag else MAJORITY_COLOR for flag in flags]


def _class_axis(names, flags, suffixes=None):
    """Axis settings that show class names, minority ones in bold orange, with optional suffixes."""
    suffixes = suffixes or [""] * len(names)
    ticktext = [
        f'<b><span style="color:{MINORITY_COLOR}">{name}{suffix}</span></b>' if flag else f"{name}{suffix}"
        for name, flag, suffix in zip(names, flags, suffixes)
    ]
    return dict(tickmode="array", tickvals=list(names), ticktext=ticktext, automargin=True)


def _add_minority_note(fig, flags):
    """Explain the orange highlighting above the plot when any class is a minority class."""
    if any(flags):
        fig.add_annotation(
            text=f'<b><span style="color:{MINORITY_COLOR}">orange</span></b> = minority class '
                 f"(train count < {MINORITY_FRACTION:g} × median)",
            xref="paper", yref="paper", x=1, y=1.02, xanchor="right", yanchor="bottom", showarrow=False,
        )


def _style_class_bars(fig, names, flags, title, value_title, suffixes=None):
    """Lay out horizontal per-class bars: classes top to bottom, height grows with the class count."""
    fig.update_layout(
        title=title, barmode="group", height=max(MIN_HEIGHT_PX, 160 + PX_PER_CLASS * len(names)),
        margin=dict(t=110), legend=dict(orientation="h", x=0, y=1.0, xanchor="left", yanchor="bottom"),
    )
    fig.update_yaxes(**_class_axis(names, flags, suffixes), autorange="reversed")
    fig.update_xaxes(title_text=value_title)
    _add_minority_note(fig, flags)
    return fig


def _style_heatmap(fig, names, flags, title):
    """Lay out a class × class heatmap: true classes down, predicted classes across at an angle."""
    fig.update_layout(title=title, height=max(MIN_HEIGHT_PX, 220 + PX_PER_CLASS * len(names)), margin=dict(t=90))
    fig.update_xaxes(**_class_axis(names, flags), tickangle=-45, title_text="Predicted class")
    fig.update_yaxes(**_class_axis(names, flags), autorange="reversed", title_text="True class")
    _add_minority_note(fig, flags)
    return fig


def class_distribution_figure(classes, train_counts, test_counts, minority):
    """Horizontal bars of train (solid) and test (hatched) image counts per class.

    Example:
        >>> fig = class_distribution_figure(["cat", "owl"], [90, 10], [30, 4], [False, True])
        >>> [trace.name for trace in fig.data]
        ['Train', 'Test']
    """
    names = _texts(classes)
    flags = _minority_flags(minority, len(names))
    if len(train_counts) != len(names) or len(test_counts) != len(names):
        raise ConfigError(
            f"got {len(train_counts)} train and {len(test_counts)} test counts for {len(names)} classes; "
            "pass one count per class, in class order"
        )
    colors = _class_colors(flags)
    fig = go.Figure([
        go.Bar(name="Train", y=names, x=list(train_counts), orientation="h", marker=dict(color=colors)),
        go.Bar(name="Test", y=names, x=list(test_counts), orientation="h",
               marker=dict(color=colors, pattern_shape=HATCH)),
    ])
    return _style_class_bars(fig, names, flags, "Images per class", "Images")


def _cell_text(values, fmt, show):
    """Cell labels, blank where `show` is False so empty cells don't drown the informative ones."""
    return [[fmt.format(v) if keep else "" for v, keep in zip(row, keep_row)] for row, keep_row in zip(values, show)]


def _log_ticks(values):
    """1-2-5 tick positions spanning `values` (> 0), so a log axis is labelled even within one decade."""
    low, high = min(values) / 1.5, max(values) * 1.5
    ticks = [m * 10.0**e for e in range(-4, 6) for m in (1, 2, 5)]
    inside = [t for t in ticks if low <= t <= high]
    return inside if len(inside) >= 2 else [t for t in ticks if low / 10 <= t <= high * 10]


def confusion_matrix_figure(cm, classes, normalize=False, *, minority=None):
    """Heatmap of a confusion matrix (rows = true class), as counts or row-normalized shares.

    Example:
        >>> fig = confusion_matrix_figure([[3, 1], [0, 2]], ["cat", "owl"], normalize=True)
        >>> fig.data[0].z.tolist()
        [[0.75, 0.25], [0.0, 1.0]]
    """
    names = _texts(classes)
    counts = check_confusion(cm, len(names))
    flags = _minority_flags(minority, len(names))
    if normalize:
        shares = normalize_confusion(counts)
        heatmap = go.Heatmap(
            z=shares, customdata=counts, zmin=0, zmax=1, text=_cell_text(shares, "{:.0%}", counts > 0),
            texttemplate="%{text}",
            hovertemplate="true %{y}<br>predicted %{x}<br>%{z:.1%} (%{customdata} images)<extra></extra>",
        )
        title = "Confusion matrix (row-normalized: share of each true class)"
    else:
        heatmap = go.Heatmap(z=counts, text=_cell_text(counts, "{}", counts > 0), texttemplate="%{text}",
                             hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>")
        title = "Confusion matrix (counts)"
    heatmap.update(x=names, y=names, colorscale="Blues")
    return _style_heatmap(go.Figure(heatmap), names, flags, title)


def _interval_bars(rows, metric):
    """Bar values and Wilson error-bar lengths for ``metric``; a missing interval draws no bar."""
    values = [getattr(row, metric) for row in rows]
    intervals = [(getattr(row, f"{metric}_low"), getattr(row, f"{metric}_high")) for row in rows]
    above = [0 if high is None else high - value for value, (_, high) in zip(values, intervals)]
    below = [0 if low is None else value - low for value, (low, _) in zip(values, intervals)]
    return values, dict(type="data", array=above, arrayminus=below, visible=True)


def per_class_figure(per_class):
    """Grouped bars of precision (solid) and recall (hatched) per class (`ClassRow`s) with Wilson 95% error bars.

    Example:
        >>> fig = per_class_figure(record.per_class)  # doctest: +SKIP
        >>> [trace.name for trace in fig.data]
        ['Precision', 'Recall']
    """
    names = _texts(row.name for row in per_class)
    flags = [row.minority for row in per_class]
    colors = _class_colors(flags)
    fig = go.Figure()
    for metric, pattern in (("precision", ""), ("recall", HATCH)):
        values, error = _interval_bars(per_class, metric)
        fig.add_trace(go.Bar(
            name=metric.capitalize(), y=names, x=values, orientation="h", error_x=error,
            marker=dict(color=colors, pattern_shape=pattern),
            hovertemplate=f"%{{y}}<br>{metric} %{{x:{SCORE_HOVER}}}<extra></extra>",
        ))
    fig.update_xaxes(range=[0, 1.05])
    suffixes = [f" (n={row.support})" for row in per_class]
    return _style_class_bars(fig, names, flags, "Precision and recall per class (Wilson 95% intervals)",
                             "Score", suffixes)


def learning_curve_figure(history):
    """Loss and accuracy per epoch for train and (when recorded) validation and test, side by side.

    Example:
        >>> fig = learning_curve_figure([{"epoch": 1, "train_loss": 0.9, "train_acc": 0.6}])
        >>> [trace.name for trace in fig.data]
        ['train', 'train']
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    epochs = [entry["epoch"] for entry in history]
    for col, metric in enumerate(("loss", "acc"), start=1):
        for split, color in SPLIT_COLORS.items():
            values = [entry.get(f"{split}_{metric}") for entry in history]
            if all(value is None for value in values):
                continue
            fig.add_trace(go.Scatter(
                x=epochs, y=values, mode="lines+markers", name=split, legendgroup=split,
                showlegend=not any(trace.name == split for trace in fig.data), line=dict(color=color),
            ), row=1, col=col)
    fig.update_xaxes(title_text="Epoch")
    fig.update_yaxes(title_text="Loss", row=1, col=1)
    fig.update_yaxes(title_text="Accuracy", range=[0, 1.02], row=1, col=2)
    fig.update_layout(title="Learning curve", height=MIN_HEIGHT_PX)
    return fig


def pareto_front(times, scores):
    """Indices of points no other point beats (lower time and higher score), sorted by time.

    Example:
        >>> pareto_front([1.0, 2.0, 3.0], [0.5, 0.4, 0.9])
        [0, 2]
    """
    times, scores = np.asarray(times, dtype=float), np.asarray(scores, dtype=float)
    if times.ndim != 1 or times.shape != scores.shape or not np.all(np.isfinite(times) & np.isfinite(scores)):
        raise ConfigError(
            f"pareto_front needs two equal-length 1-D lists of finite numbers, got shapes {times.shape} "
            f"and {scores.shape}; drop runs without a time or score"
        )
    # no_worse[j, i]: point j is at least as fast and as good as point i; better[j, i]: strictly in one.
    no_worse = (times[:, None] <= times[None, :]) & (scores[:, None] >= scores[None, :])
    better = (times[:, None] < times[None, :]) | (scores[:, None] > scores[None, :])
    front = np.flatnonzero(~(no_worse & better).any(axis=0))
    return [int(i) for i in front[np.lexsort((-scores[front], times[front]))]]


def _run_error_bars(runs, metric):
    """Bootstrap 95% error bars of ``metric``; runs recorded before intervals existed get none."""
    intervals = [run.interval(metric) or (run.score(metric),) * 2 for run in runs]
    above = [high - run.score(metric) for run, (_, high) in zip(runs, intervals)]
    below = [run.score(metric) - low for run, (low, _) in zip(runs, intervals)]
    return dict(type="data", array=above, arrayminus=below, visible=True, thickness=1)


def tradeoff_figure(runs):
    """Accuracy and macro-F1 versus fit time (log scale), coloured by approach, with the accuracy Pareto front.

    Error bars are each run's bootstrap 95% interval over test images (when recorded).

    Example:
        >>> fig = tradeoff_figure([svm_record])  # doctest: +SKIP
        >>> [trace.name for trace in fig.data]  # doctest: +SKIP
        ['svm · Accuracy', 'svm · Macro-F1', 'Pareto front (accuracy)']
    """
    fit_s = [max(run.fit_seconds, MIN_FIT_S) for run in runs]
    fig = go.Figure()
    approaches = list(dict.fromkeys(run.approach for run in runs))
    for approach in approaches:
        members = [i for i, run in enumerate(runs) if run.approach == approach]
        hover_data = [_texts((runs[i].approach, runs[i].class_weight, runs[i].run_id)) for i in members]
        for metric, symbol in METRIC_SYMBOLS.items():
            label = title(metric)
            fig.add_trace(go.Scatter(
                x=[fit_s[i] for i in members], y=[runs[i].score(metric) for i in members], mode="markers",
                error_y=_run_error_bars([runs[i] for i in members], metric),
                name=f"{_text(approach)} · {label}", legendgroup=_text(approach), customdata=hover_data,
                marker=dict(color=approach_color(approach), symbol=symbol, size=11,
                            line=dict(width=1, color="white")),
                hovertemplate=f"{label} %{{y:{SCORE_HOVER}}}<br>fit %{{x:.2f}} s<br>approach %{{customdata[0]}}"
                              "<br>class weight %{customdata[1]}<br>run %{customdata[2]}<extra></extra>",
            ))
    front = pareto_front(fit_s, [run.accuracy for run in runs])
    fig.add_trace(go.Scatter(
        x=[fit_s[i] for i in front], y=[runs[i].accuracy for i in front], mode="lines",
        line=dict(shape="hv", dash="dash", color=NEUTRAL_COLOR), name="Pareto front (accuracy)", hoverinfo="skip",
    ))
    ticks = _log_ticks(fit_s)
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g} s" for t in ticks], title_text="Fit time (log scale)")
    fig.update_yaxes(title_text="Score")
    fig.update_layout(title="Score versus fit time", height=MIN_HEIGHT_PX + 100)
    return fig


def confusion_diff_figure(cm_a, cm_b, classes, label_a, label_b, *, minority=None):
    """Heatmap of row-normalized confusion B minus A on a diverging scale centred on 0.

    Example:
        >>> fig = confusion_diff_figure([[2, 2], [0, 4]], [[4, 0], [0, 4]], ["cat", "owl"], "A", "B")
        >>> fig.data[0].z.tolist()
        [[0.5, -0.5], [0.0, 0.0]]
    """
    names, (label_a, label_b) = _texts(classes), _texts((label_a, label_b))
    flags = _minority_flags(minority, len(names))
    diff = normalize_confusion(check_confusion(cm_b, len(names))) - normalize_confusion(
        check_confusion(cm_a, len(names)))
    fig = go.Figure(go.Heatmap(
        z=diff, x=names, y=names, colorscale="RdBu", zmid=0, texttemplate="%{text}",
        text=_cell_text(diff, "{:+.0%}", np.abs(diff) >= 0.005),
        colorbar=dict(title=dict(text=f"{label_b} − {label_a}")),
        hovertemplate="true %{y}<br>predicted %{x}<br>change %{z:+.1%}<extra></extra>",
    ))
    return _style_heatmap(fig, names, flags, f"Row-normalized confusion: {label_b} minus {label_a}")


def _shared_classes(per_class_a, per_class_b):
    """The class names of two per-class tables, which must be the same."""
    names = [row.name for row in per_class_a]
    if [row.name for row in per_class_b] != names:
        raise ConfigError(
            f"the two runs have different classes: {names} vs {[row.name for row in per_class_b]}; "
            "compare runs on the same dataset"
        )
    return _texts(names)


def f1_delta_figure(per_class_a, per_class_b, label_a, label_b):
    """Bar per class of F1(B) − F1(A): green where B is better, red where it is worse.

    Example:
        >>> a = class_rows(evaluate([0, 1], [0, 0], ["cat", "owl"]))
        >>> b = class_rows(evaluate([0, 1], [0, 1], ["cat", "owl"]))
        >>> [round(x, 2) for x in f1_delta_figure(a, b, "A", "B").data[0].x]
        [0.33, 1.0]
    """
    names, (label_a, label_b) = _shared_classes(per_class_a, per_class_b), _texts((label_a, label_b))
    deltas = [b.f1 - a.f1 for a, b in zip(per_class_a, per_class_b)]
    support = [row.support for row in per_class_a]
    shaky = [0 < n <= UNRELIABLE_MAX_TEST for n in support]
    colors = [POSITIVE_COLOR if d > 0 else NEGATIVE_COLOR if d < 0 else NEUTRAL_COLOR for d in deltas]
    flags = [row.minority for row in per_class_a]
    fig = go.Figure(go.Bar(
        y=names, x=deltas, orientation="h", name=f"F1 {label_b} − {label_a}",
        marker=dict(color=colors, opacity=[0.35 if s else 1.0 for s in shaky],
                    pattern_shape=[UNRELIABLE_HATCH if s else "" for s in shaky]),
        customdata=[[a.f1, b.f1, n] for a, b, n in zip(per_class_a, per_class_b, support)],
        hovertemplate=f"%{{y}}<br>F1 {label_a} %{{customdata[0]:{SCORE_HOVER}}} → "
                      f"{label_b} %{{customdata[1]:{SCORE_HOVER}}}"
                      f"<br>change %{{x:+{SCORE_HOVER}}}<br>%{{customdata[2]}} test images<extra></extra>",
    ))
    fig.add_vline(x=0, line=dict(color=NEUTRAL_COLOR, width=1))
    suffixes = [f" (n={n}, unreliable)" if s else " (no test images)" if n == 0 else ""
                for n, s in zip(support, shaky)]
    fig = _style_class_bars(fig, names, flags, f"Per-class F1 change: {label_b} minus {label_a}",
                            f"F1({label_b}) − F1({label_a})", suffixes)
    if any(shaky):
        fig.add_annotation(text=f"faded, hatched = {UNRELIABLE_MAX_TEST} or fewer test images: one image more or "
                                "less swings F1 a lot", xref="paper", yref="paper", x=0, y=1.1, xanchor="left",
                           yanchor="bottom", showarrow=False)
    return fig


DELTA_METRICS = {"precision": ("#1f77b4", ""), "recall": ("#1f77b4", HATCH), "f1": ("#2a3f5f", "")}
MAP_SYMBOLS = {"train": "circle", "test · correct": "diamond", "test · misclassified": "x"}
MAP_HEIGHT_PX = 760  # plot area; the class legend goes below it


def per_class_delta_figure(per_class_a, per_class_b, label_a, label_b):
    """Grouped bars per class of the change in precision, recall (hatched) and F1 from run A to run B.

    Example:
        >>> a = class_rows(evaluate([0, 1], [0, 0], ["cat", "owl"]))
        >>> b = class_rows(evaluate([0, 1], [0, 1], ["cat", "owl"]))
        >>> [round(x, 2) for x in per_class_delta_figure(a, b, "A", "B").data[1].x]
        [0.0, 1.0]
    """
    names, (label_a, label_b) = _shared_classes(per_class_a, per_class_b), _texts((label_a, label_b))
    fig = go.Figure()
    for metric, (color, pattern) in DELTA_METRICS.items():
        fig.add_trace(go.Bar(
            name=f"Δ {metric}", y=names, x=[getattr(b, metric) - getattr(a, metric)
                                            for a, b in zip(per_class_a, per_class_b)],
            orientation="h", marker=dict(color=color, pattern_shape=pattern, opacity=0.55 if metric == "f1" else 1),
            customdata=[[getattr(a, metric), getattr(b, metric)] for a, b in zip(per_class_a, per_class_b)],
            hovertemplate=f"%{{y}}<br>{metric} {label_a} %{{customdata[0]:{SCORE_HOVER}}} → "
                          f"{label_b} %{{customdata[1]:{SCORE_HOVER}}}"
                          f"<br>change %{{x:+{SCORE_HOVER}}}<extra></extra>",
        ))
    fig.add_vline(x=0, line=dict(color=NEUTRAL_COLOR, width=1))
    return _style_class_bars(fig, names, [row.minority for row in per_class_a],
                             f"Per-class change: {label_b} minus {label_a}", f"{label_b} − {label_a}")


def clickable_confusion_figure(cm, classes, normalize=False, *, minority=None):
    """`confusion_matrix_figure` plus an invisible marker on every cell, so a click selects that cell.

    Plotly heatmaps report no selections; the markers do, with `customdata` = [true index, predicted index].

    Example:
        >>> fig = clickable_confusion_figure([[3, 1], [0, 2]], ["cat", "owl"])
        >>> list(fig.data[1].customdata[1])
        [0, 1, 1]
    """
    fig = confusion_matrix_figure(cm, classes, normalize, minority=minority)
    names, counts = _texts(classes), np.asarray(cm)
    cells = [(i, j) for i in range(len(names)) for j in range(len(names))]
    fig.data[0].hoverinfo = "skip"  # the markers carry the hover text, so one label shows
    fig.add_trace(go.Scatter(
        x=[names[j] for _, j in cells], y=[names[i] for i, _ in cells], mode="markers", showlegend=False,
        marker=dict(size=max(12, min(40, 600 // len(names))), symbol="square", opacity=0),
        customdata=[[i, j, int(counts[i, j])] for i, j in cells], name="cells",
        hovertemplate="true %{y}<br>predicted %{x}<br>%{customdata[2]} images (click to show them)<extra></extra>",
    ))
    fig.update_xaxes(range=[-0.5, len(names) - 0.5])  # the markers must not pad the axes: cells stay aligned
    fig.update_yaxes(range=[len(names) - 0.5, -0.5], autorange=False)
    fig.update_layout(clickmode="event+select")
    return fig


def feature_map_figure(coords, labels, classes, *, is_test, predicted, names, minority=None):
    """2-D map of image features: colour = true class, symbol = train / test correct / test misclassified.

    `predicted` holds the selected run's class index per test image (-1 for train images or no run).
    Every point's `customdata` starts with its sample index, for selections.

    Example:
        >>> fig = feature_map_figure([[0, 0], [1, 1]], [0, 1], ["cat", "owl"], is_test=[False, True],
        ...                          predicted=[-1, 0], names=["a.png", "b.png"])
        >>> [trace.name for trace in fig.data][:2]
        ['cat', 'owl']
    """
    coords, labels = np.asarray(coords, dtype=float), np.asarray(labels)
    is_test, predicted = np.asarray(is_test, dtype=bool), np.asarray(predicted)
    if coords.shape != (len(labels), 2) or not len(labels) == len(is_test) == len(predicted) == len(names):
        raise ConfigError(f"map coordinates {coords.shape}, {len(labels)} labels, {len(is_test)} split flags, "
                          f"{len(predicted)} predictions and {len(names)} names must describe the same images")
    flags = _minority_flags(minority, len(classes))
    kind = np.where(~is_test, "train", np.where(predicted == labels, "test · correct", "test · misclassified"))
    kind = np.where(is_test & (predicted < 0), "test", kind)
    fig, classes, names = go.Figure(), _texts(classes), _texts(names)
    for c, (name, color) in enumerate(zip(classes, itertools.cycle(CLASS_COLORS))):
        members = np.flatnonzero(labels == c)
        shown = f"<b>{name}</b> (minority)" if flags[c] else name
        fig.add_trace(go.Scattergl(
            x=coords[members, 0], y=coords[members, 1], mode="markers", name=shown, legendgroup=name,
            marker=dict(color=color, size=[9 if is_test[i] else 6 for i in members], line=dict(width=0),
                        symbol=[MAP_SYMBOLS.get(kind[i], "circle-open") for i in members],
                        opacity=0.85),
            customdata=[[int(i), names[i], name, classes[predicted[i]] if predicted[i] >= 0 else "—", kind[i]]
                        for i in members],
            hovertemplate="%{customdata[1]}<br>true %{customdata[2]}<br>predicted %{customdata[3]}"
                          "<br>%{customdata[4]}<extra></extra>",
        ))
    for label, symbol in MAP_SYMBOLS.items():  # legend entries explaining the symbols
        fig.add_trace(go.Scattergl(x=[None], y=[None], mode="markers", name=label, legendgroup="symbols",
                                   marker=dict(color=NEUTRAL_COLOR, symbol=symbol, size=9)))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    legend_rows = -(-(len(classes) + len(MAP_SYMBOLS)) // 3)  # below the map, so long names leave it its width
    fig.update_layout(title="Feature map (PCA to 50 dims, then t-SNE): near points look alike to the backbone",
                      height=MAP_HEIGHT_PX + 22 * legend_rows, dragmode="select", margin=dict(b=22 * legend_rows + 20),
                      legend=dict(itemsizing="constant", orientation="h", x=0, y=-0.02, yanchor="top"))
    return fig


def reliability_figure(curves):
    """Reliability diagram: per confidence bin, accuracy against mean confidence, one line per named curve
    (`{name: core.calibration.reliability rows}`), marker size by images in the bin; the diagonal is perfect
    calibration.

    Example:
        >>> fig = reliability_figure({"raw": [{"confidence": 0.9, "accuracy": 0.7, "count": 10}]})
        >>> [trace.name for trace in fig.data]
        ['perfectly calibrated', 'raw']
    """
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="perfectly calibrated",
                               line=dict(color=NEUTRAL_COLOR, dash="dash")))
    for (name, rows), color in zip(curves.items(), (NEGATIVE_COLOR, MAJORITY_COLOR, POSITIVE_COLOR)):
        counts = np.array([row["count"] for row in rows], dtype=float)
        sizes = 6 + 18 * np.sqrt(counts / counts.max()) if len(counts) else []
        fig.add_trace(go.Scatter(x=[row["confidence"] for row in rows], y=[row["accuracy"] for row in rows],
                                 mode="lines+markers", name=_text(name), line=dict(color=color),
                                 marker=dict(size=sizes), customdata=counts,
                                 hovertemplate=f"confidence %{{x:{SCORE_HOVER}}}<br>accuracy %{{y:{SCORE_HOVER}}}"
                                               "<br>%{customdata} images"))
    fig.update_xaxes(title_text="Confidence of the predicted class (bin mean)", range=[0, 1.02])
    fig.update_yaxes(title_text="Share of those predictions that are right", range=[0, 1.02])
    fig.update_layout(title="Reliability on the test images", height=MIN_HEIGHT_PX)
    return fig
