"""Reports from a results JSON: Markdown tables, or one self-contained HTML file with the charts."""
from __future__ import annotations

import html
import re
from pathlib import Path

import pandas as pd

from core import figures
from core.errors import ConfigError
from core.metrics import minority_mask
from core.runs import atomic_write_bytes, read_json_object

RUN_COLUMNS = {"approach": "approach", "class_weight": "weights", "accuracy": "accuracy",
               "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1", "weighted_f1": "weighted F1",
               "fit_seconds": "fit s", "predict_seconds": "predict s"}
REQUIRED = ("dataset", "runs")
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&$@])|(?<=www)(\.)|(:)(?=//)", re.IGNORECASE)  # @, www., ://: autolinks
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # a newline would start a line (`# heading`)


def escape_markdown(text) -> str:
    """`text` with Markdown and HTML specials backslash-escaped, so it shows literally (no links, autolinks, tags,
    tables), and control characters replaced by U+FFFD (no new line, so no heading or list).

    >>> print(escape_markdown("a|b <i>[x](y) www.x.org\\n# h"))
    a\\|b \\<i\\>\\[x\\](y) www\\.x.org�# h
    """
    return _MARKDOWN_SPECIAL.sub(lambda match: "\\" + match.group(), CONTROL.sub("\ufffd", str(text)))


def read_results(path) -> dict:
    """Load and check a results JSON written by `python -m core experiment`."""
    results = read_json_object(path, "results file", ConfigError)
    missing = [k for k in REQUIRED if k not in results]
    if missing:
        raise ConfigError(f"results file {str(path)!r} lacks {missing}; is it a TransferScope results.json?")
    return results


def results_from_runs(records: list[dict]) -> dict:
    """A results dict (the CLI's schema) from saved run records of one dataset, for reports and exports."""
    if not records:
        raise ConfigError("select at least one run to export")
    datasets = {tuple(r["dataset"]["classes"]) for r in records}
    if len(datasets) > 1:
        raise ConfigError("the selected runs come from datasets with different classes; export them separately")
    first = records[0]
    return {"dataset": first["dataset"], "backbone": first.get("backbone", {}),
            "extract_seconds": first.get("extract_seconds", 0.0), "cache_hit": True, "runs": records}


def render_runs_report(records: list[dict], fmt: str = "html") -> str:
    """A report of saved run records (one dataset) as `fmt`: 'html' (self-contained) or 'md'.

    >>> render_runs_report(RunStore("cache/runs").list_runs(), "md")  # doctest: +SKIP
    '# TransferScope report: digits-demo ...'
    """
    render = _renderer(fmt)
    return render(results_from_runs(records))


def runs_table(runs: list[dict]) -> pd.DataFrame:
    """One row per run with the headline metrics, rounded for display."""
    table = pd.DataFrame([{label: r.get(key) for key, label in RUN_COLUMNS.items()} for r in runs])
    return table.round(3)


def comparisons_table(results: dict) -> pd.DataFrame:
    """Paired comparisons of runs on the same test images: change B − A [95% interval] and McNemar's p."""
    names = {r["run_id"]: f"{r['approach']} · {r['class_weight']} · seed {r.get('seed', 0)}" for r in results["runs"]}
    rows = []
    for pair in results.get("comparisons", []):
        row = {"A": names.get(pair["run_a"], pair["run_a"]), "B": names.get(pair["run_b"], pair["run_b"])}
        for key, label in (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("balanced_accuracy", "balanced acc.")):
            low, high = pair[f"{key}_low"], pair[f"{key}_high"]
            row[f"Δ {label} [95%]"] = f"{pair[f'{key}_delta']:+.3f} [{low:+.3f}, {high:+.3f}]"
        rows.append({**row, "McNemar p": f"{pair['mcnemar_p']:.3g}"})
    return pd.DataFrame(rows)


PAIRED_NOTE = ("Each row compares two runs on the same test images. An interval that contains 0, or a McNemar "
               "p above 0.05, means the change could be noise.")


def per_class_table(run: dict) -> pd.DataFrame:
    rows = [{"class": c["class"], "train n": c.get("train_count"), "test n": c["support"],
             "precision": c["precision"], "recall": c["recall"], "F1": c["f1"],
             "minority": "yes" if c.get("minority") else ""} for c in run["per_class"]]
    return pd.DataFrame(rows).round(3)


def _markdown_table(table: pd.DataFrame) -> str:
    """A Markdown table whose text cells are escaped (a class name with `|` or HTML stays one literal cell)."""
    return table.map(lambda value: escape_markdown(value) if isinstance(value, str) else value).to_markdown(index=False)


def render_markdown(results: dict) -> str:
    """A Markdown report: dataset summary, runs table, per-class table of each run (names shown literally)."""
    ds = results["dataset"]
    lines = [f"# TransferScope report: {escape_markdown(Path(ds.get('root', '')).name)}", "",
             f"- classes: {len(ds['classes'])}; train images: {sum(ds['train_counts'])}; "
             f"test images: {sum(ds['test_counts'])}",
             f"- backbone: {results.get('backbone', {}).get('name', '?')}; feature extraction "
             f"{results.get('extract_seconds', 0):.1f} s ({'cache hit' if results.get('cache_hit') else 'computed'})",
             "", "## Runs", "", _markdown_table(runs_table(results["runs"])), ""]
    if results.get("comparisons"):
        lines += ["## Paired comparisons (B minus A)", "", PAIRED_NOTE, "",
                  _markdown_table(comparisons_table(results)), ""]
    for run in results["runs"]:
        title = " · ".join(escape_markdown(run[key]) for key in ("approach", "class_weight"))
        lines += [f"## {title} ({escape_markdown(run.get('run_id', ''))})", "",
                  _markdown_table(per_class_table(run)), ""]
        if run.get("never_predicted"):
            lines += [f"Never predicted: {', '.join(map(escape_markdown, run['never_predicted']))}", ""]
        if run.get("no_test_support"):
            unscored = ", ".join(map(escape_markdown, run["no_test_support"]))
            lines += [f"No test images (left out of the averages): {unscored}", ""]
    return "\n".join(lines)


def render_html(results: dict) -> str:
    """One self-contained HTML page (plotly.js inlined once) with tables and charts."""
    ds = results["dataset"]
    figs = [figures.class_distribution_figure(ds["classes"], ds["train_counts"], ds["test_counts"],
                                              minority_mask(ds["train_counts"]))]
    if results["runs"]:
        figs.append(figures.tradeoff_figure(results["runs"]))
    parts = [_figure_html(f, i == 0) for i, f in enumerate(figs)]
    parts.append(runs_table(results["runs"]).to_html(index=False, classes="runs"))
    if results.get("comparisons"):
        parts += [f"<h2>Paired comparisons (B minus A)</h2><p>{PAIRED_NOTE}</p>",
                  comparisons_table(results).to_html(index=False)]
    for run in results["runs"]:
        parts.append(f"<h2>{html.escape(run['approach'])} · {html.escape(run['class_weight'])}</h2>")
        parts.append(_figure_html(figures.confusion_matrix_figure(run["confusion_matrix"], ds["classes"]), False))
        parts.append(_figure_html(figures.per_class_figure(run["per_class"]), False))
        parts.append(per_class_table(run).to_html(index=False))
    title = html.escape(f"TransferScope report: {Path(ds.get('root', '')).name}")
    style = "body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse}" \
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>" \
           f"</head><body><h1>{title}</h1>{''.join(parts)}</body></html>"


def _figure_html(fig, include_js: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=bool(include_js))


def write_report(results_path, out_path, fmt: str = "md") -> Path:
    """Render `results_path` as `fmt` ('md' or 'html') to `out_path`, atomically."""
    render = _renderer(fmt)
    text = render(read_results(results_path))
    out_path = Path(out_path)
    atomic_write_bytes(out_path, text.encode())
    return out_path


def _renderer(fmt: str):
    renderers = {"md": render_markdown, "html": render_html}
    if fmt not in renderers:
        raise ConfigError(f"unknown report format {fmt!r}; choose md or html")
    return renderers[fmt]
