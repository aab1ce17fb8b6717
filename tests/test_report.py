"""Markdown and self-contained HTML reports from a results file (core.report)."""
import json
import re

import pytest

from core.errors import ConfigError
from core.report import (comparisons_table, report_comparisons, per_class_table, read_results, render_html, render_markdown, render_runs_report,
                         results_from_runs, run_records, runs_table, write_report)


@pytest.fixture(scope="module")
def results_file(demo_experiment, tmp_path_factory):
    from core.storage import atomic_write_json

    path = tmp_path_factory.mktemp("report") / "results.json"
    atomic_write_json(path, demo_experiment[0])
    return path


def test_runs_table_has_one_row_per_run(demo_experiment):
    runs = run_records(demo_experiment[0])
    table = runs_table(runs)
    assert list(table.columns) == ["run", "validation macro-F1", "macro-F1 [95%]", "balanced acc. [95%]",
                                   "accuracy [95%]", "fit s", "predict s"]
    assert table["run"].tolist() == ["svm · none", "svm · balanced", "head · none", "head · balanced"]
    assert table["accuracy [95%]"].tolist() == [f"{r.accuracy:.3f} [{r.accuracy_low:.3f}, "
                                                f"{r.accuracy_high:.3f}]" for r in runs]


def test_per_class_table(demo_experiment):
    run = run_records(demo_experiment[0])[1]
    table = per_class_table(run)
    assert table["class"].tolist() == [row.name for row in run.per_class]
    assert table["test n"].tolist() == [row.support for row in run.per_class]
    assert table["train n"].tolist() == demo_experiment[0]["dataset"]["train_counts"]
    assert "yes" in table["minority"].tolist()  # the demo's rare classes are flagged


def test_markdown_report(results_file, tmp_path, demo_experiment):
    results = demo_experiment[0]
    out = write_report(results_file, tmp_path / "report.md")
    text = out.read_text()
    assert text == render_markdown(results)
    assert text.startswith("# Lab report: digits-demo")
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert headings == ["## Data", "## Method", "## Results", "## Findings", "## Paired comparisons (B minus A)",
                        "## Limitations", "## Reproducibility", "## Appendix: every run"]
    runs_section = text.split("### Runs")[1].split("\n### ")[0]
    header = runs_section.strip().splitlines()[0]
    for column in ("run", "validation macro-F1", "macro-F1 [95%]", "balanced acc. [95%]", "accuracy [95%]"):
        assert column in header
    assert len([line for line in runs_section.splitlines() if line.startswith(("| svm", "| head"))]) == 4
    for run in results["runs"]:
        heading = f"### {run['approach']} · {run['remedy']} ({run['run_id']})"
        assert heading in text
        section = text.split(heading)[1].split("\n### ")[0]
        assert all(f"| {c}" in section for c in results["dataset"]["classes"])
        assert "precision" in section and "recall" in section
    assert f"{sum(results['dataset']['train_counts'])} training and" in text
    assert "ratio 16.0:1" in text  # the demo's imbalance
    assert "Dataset fingerprint: " + results["dataset"]["content_fingerprint"] in text
    command = text.split("- command: `")[1].split("`")[0]
    assert command.startswith("python -m core experiment --data ") and "--approaches svm,head" in command
    assert "--remedy none,balanced" in command and "--epochs 15" in command


def test_markdown_lists_never_predicted_classes(demo_experiment):
    results = json.loads(json.dumps(demo_experiment[0]))
    results["runs"][0]["never_predicted"] = ["8-eight", "9-nine"]
    assert "Never predicted: 8-eight, 9-nine" in render_markdown(results)


def test_markdown_flags_classes_without_test_images(demo_experiment):
    results = json.loads(json.dumps(demo_experiment[0]))
    results["runs"][1]["no_test_support"] = ["9-nine"]
    assert "No test images (left out of the averages): 9-nine" in render_markdown(results)


MARKUP_NAMES = ["cats|dogs", "<img src=x onerror=alert(1)>", "[click](http://evil.example)"]


def test_markdown_shows_names_literally(demo_experiment):
    """A `|` must not split a table cell, raw HTML must not pass through, a name must not become a link."""
    results = json.loads(json.dumps(demo_experiment[0]))
    run = results["runs"][0]
    for row, name in zip(run["per_class"], MARKUP_NAMES):
        row["class"] = name
    run["never_predicted"], run["remedy"] = MARKUP_NAMES, "custom:<b>mine</b>"
    text = render_markdown(results)
    assert not re.search(r"(?<!\\)<(img|b>)", text), "raw HTML passed through"
    assert not re.search(r"(?<!\\)\]\(http://evil", text), "a name became a link"  # run links are the report's own
    tables = [line for line in text.split("## Appendix")[1].splitlines() if line.startswith("|")]  # per-run tables
    cells = {len(re.findall(r"(?<!\\)\|", line)) for line in tables if "class" in line or "cats" in line}
    assert len(cells) == 1, "an escaped `|` keeps every row of the per-class table at the same number of cells"
    assert "cats\\|dogs" in text and "\\<img src=x onerror=alert(1)\\>" in text


def test_html_report_is_self_contained(results_file, tmp_path, demo_experiment):
    out = write_report(results_file, tmp_path / "report.html", fmt="html")
    page = out.read_text()
    assert page.startswith("<!doctype html>") and page.rstrip().endswith("</html>")
    assert len(re.findall(r"plotly\.js v\d", page)) == 1
    assert not re.search(r"<script[^>]*\bsrc\s*=", page, flags=re.I)
    n_runs = len(demo_experiment[0]["runs"])
    assert page.count("Plotly.newPlot") == 4  # distribution, trade-off, the chosen run's per-class F1 and confusion
    assert page.count("<table") == 3 + n_runs  # runs, best runs per class, paired comparisons, one per run


def test_html_escapes_names(demo_experiment):
    results = json.loads(json.dumps(demo_experiment[0]))
    results["runs"][0]["remedy"] = "<script>alert(1)</script>"
    page = render_html(results)
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_html_charts_show_markup_in_names_as_text(demo_experiment):
    """Plotly renders <a href> and styles found in labels: a class named so was a live link in the report."""
    results = json.loads(json.dumps(demo_experiment[0]))
    link = '<a href="http://evil.example">zero</a>'
    results["dataset"]["classes"][0] = link
    for run in results["runs"]:
        run["per_class"][0]["class"], run["remedy"] = link, '<span style="color:red">none</span>'
    page = render_html(results)
    charts = page.replace("\\u003c", "<").replace("\\u003e", ">").replace("\\u002f", "/").replace("\\u0026", "&")
    assert '<a href=\\"http://evil.example\\">' not in charts and '<span style=\\"color:red\\">' not in charts
    assert "&lt;a href=" in charts


def test_missing_results_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_results(tmp_path / "results.json")


@pytest.mark.parametrize("content,match", [
    ("{not json", "not valid JSON"),
    ('{"runs": []}', "dataset"),
    ('{"dataset": {}}', "runs"),
    ("[1, 2, 3]", "must hold a JSON object"),
    ('"text"', "must hold a JSON object"),
])
def test_invalid_results_file(tmp_path, content, match):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=match):
        read_results(path)
    with pytest.raises(ConfigError):
        write_report(path, tmp_path / "out.md")
    assert not (tmp_path / "out.md").exists()


def test_unknown_format(results_file, tmp_path):
    with pytest.raises(ConfigError, match="pdf"):
        write_report(results_file, tmp_path / "out.pdf", fmt="pdf")


def test_results_without_runs_still_render():
    results = {"dataset": {"root": "/data/boats", "classes": ["a", "b"], "train_counts": [3, 1],
                           "test_counts": [1, 1]}, "runs": []}
    assert "# Lab report: boats" in render_markdown(results)
    assert render_html(results).count("Plotly.newPlot") == 1


def test_report_of_saved_runs(demo_experiment):
    _, store = demo_experiment
    records = store.list_runs()
    markdown = render_runs_report(records, "md")
    assert markdown == render_markdown(results_from_runs(records))
    assert all(record.run_id in markdown for record in records)
    page = render_runs_report(records[:1], "html")
    assert page.startswith("<!doctype html>") and records[0].approach in page
    assert page.count("<table") == 3  # the runs table, the best runs' per-class F1, the one run's per-class table
    with pytest.raises(ConfigError, match="pdf"):
        render_runs_report(records, "pdf")
    with pytest.raises(ConfigError, match="at least one run"):
        render_runs_report([], "html")


def test_reports_show_paired_comparisons(demo_experiment):
    results = demo_experiment[0]
    assert results["comparisons"], "the demo experiment compares its runs"
    comparisons = report_comparisons(results)
    table = comparisons_table(run_records(results), comparisons)
    assert len(table) == len(results["comparisons"])  # no predictions at hand: the results' own comparisons
    first = results["comparisons"][0]
    assert table["Δ accuracy [95%]"][0].startswith(f"{first['accuracy_delta']:+.3f} [")
    assert table["McNemar p (Holm)"][0] != f"{first['mcnemar_p']:.2g}" or first["mcnemar_p"] in (0, 1)
    markdown = render_markdown(results)
    assert "## Paired comparisons (B minus A)" in markdown and "McNemar p (Holm)" in markdown
    assert f"Holm over {len(comparisons)} paired comparisons" in markdown
    assert "McNemar p (Holm)" in render_html(results)
    old = {**results, "comparisons": []}  # results written before paired statistics
    assert "Paired comparisons" not in render_markdown(old)
