"""The lab report of a set of runs on one dataset: Markdown, or one self-contained HTML file with the charts.

Sections, as a student hands them in: data, method, results (headline table with intervals, per-class F1
of the best runs, charts), findings (core.findings: computed, each with its test and links to its runs),
the paired comparisons with Holm-adjusted p-values, limitations, and a reproducibility block.
"""
from __future__ import annotations

import html
import importlib.metadata
import platform
import re
import subprocess
from pathlib import Path

import pandas as pd

from core import figures
from core.errors import ConfigError, TransferScopeError
from core.findings import (FEW_TEST_IMAGES, Comparisons, family_pairs, findings, fmt_delta, fmt_p,
                           store_comparer, with_interval)
from core.metric_labels import LABELS, short
from core.metrics import minority_mask
from core.naming import run_names
from core.records import RunRecord
from core.sharing import run_link
from core.storage import atomic_write_bytes, read_json_object
from core.store import RunStore
from core.style import SCORE_DECIMALS, score

REQUIRED = ("dataset", "runs")
TABLE_METRICS = ("macro_f1", "balanced_accuracy", "accuracy")  # the report tables' scores, most telling first
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&$@])|(?<=www)(\.)|(:)(?=//)", re.IGNORECASE)  # @, www., ://: autolinks
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")  # a newline would start a line (`# heading`)
DEFAULT_BASE_URL = "http://localhost:8501"  # where `make run` serves the dashboard the links open
ALWAYS_IN_COMMAND = ("data", "backbone", "approaches", "remedies", "seed")  # defaults may change between versions
KEY_PACKAGES = ("torch", "timm", "scikit-learn", "numpy", "scipy", "openvino", "plotly")
PAIRED_NOTE = ("Each row compares two runs on the same test images (B minus A): the change with its paired "
               "bootstrap 95% interval, and p-values adjusted with Holm's method over every comparison in this "
               "table (the family), so a p < 0.05 here holds for the table as a whole. An interval that contains "
               "0 means the runs are indistinguishable.")


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
    try:
        run_records(results)
    except TransferScopeError as err:
        raise ConfigError(f"results file {str(path)!r}: {err}") from None
    return results


def run_records(results: dict) -> list[RunRecord]:
    """The runs of a results dict (their JSON, as results.json holds them) as records."""
    return [run if isinstance(run, RunRecord) else RunRecord.from_json(run, f"results run {i + 1}")
            for i, run in enumerate(results["runs"])]


def check_one_dataset(records: list[RunRecord]) -> None:
    """Raise ConfigError, naming the datasets and what to do, unless `records` are 1+ runs of one set of classes."""
    if not records:
        raise ConfigError("select at least one run to export")
    by_classes: dict[tuple, set] = {}
    for record in records:
        by_classes.setdefault(tuple(record.classes), set()).add(Path(record.dataset.root).name)
    if len(by_classes) > 1:
        names = "; ".join(", ".join(sorted(folders)) for folders in by_classes.values())
        raise ConfigError(f"the selected runs come from {len(by_classes)} datasets with different classes "
                          f"({names}); a report covers one dataset: select the runs of one, or export each "
                          "dataset's runs separately (a run bundle may mix them)")


def results_from_runs(records: list[RunRecord]) -> dict:
    """A results dict (the CLI's schema) from saved run records of one dataset, for reports and exports."""
    check_one_dataset(records)
    first = records[0]
    return {"dataset": first.dataset.to_json(), "backbone": first.backbone or {},
            "extract_seconds": first.extract_seconds or 0.0, "cache_hit": True,
            "runs": [record.to_json() for record in records]}


def report_comparisons(results: dict, compute=None) -> Comparisons:
    """The family of paired tests a report shows: the results' own comparisons, the rest computed by `compute`."""
    pairs = family_pairs(run_records(results), results.get("best_by_validation"))
    return Comparisons(pairs, results.get("comparisons", ()), compute)


def render_runs_report(records: list[RunRecord], fmt: str = "html", compute=None,
                       base_url: str = DEFAULT_BASE_URL) -> str:
    """A report of saved run records (one dataset) as `fmt`: 'html' (self-contained) or 'md'.

    `compute(run_a, run_b)` gives the paired tests (e.g. `core.findings.store_comparer(store)`).

    >>> render_runs_report(store.list_runs(), "md", store_comparer(store))  # doctest: +SKIP
    '# Lab report: digits-demo ...'
    """
    results = results_from_runs(records)
    return _renderer(fmt)(results, report_comparisons(results, compute), base_url)


def runs_table(runs: list[RunRecord]) -> pd.DataFrame:
    """The headline table: one row per run, validation and test scores with 95% intervals, timings."""
    names = run_names(runs)
    rows = []
    for r in runs:
        validation = r.validation.macro_f1 if r.validation else None
        rows.append({"run": names[r.run_id],
                     f"validation {LABELS['macro_f1']}": "–" if validation is None else score(validation),
                     **{f"{short(key)} [95%]": with_interval(r, key) for key in TABLE_METRICS},
                     "fit s": round(r.fit_seconds, 3), "predict s": round(r.predict_seconds, 3)})
    return pd.DataFrame(rows)


def comparisons_table(runs: list[RunRecord], comparisons: Comparisons, pairs=None) -> pd.DataFrame:
    """Paired comparisons, B minus A: each metric's change [95% interval], Holm-adjusted macro-F1 and McNemar p.

    `pairs`: the pairs to list, in order (default: the whole family); a pair given both ways is listed once.
    """
    names = run_names(runs)
    ordered: dict[frozenset, tuple[str, str]] = {}
    for pair in [p for p in (comparisons.pairs if pairs is None else pairs) if comparisons.get(*p)]:
        ordered.setdefault(frozenset(pair), pair)  # each pair once, in the orientation a finding reads it
    rows = []
    for a, b in ordered.values():
        test = comparisons.get(a, b)
        row = {"A": names.get(a, a), "B": names.get(b, b)}
        for key in TABLE_METRICS:
            row[f"Δ {short(key)} [95%]"] = fmt_delta(test, key)
        row["macro-F1 p (Holm)"] = _p_cell(comparisons.adjusted_p(a, b)) if "macro_f1_p" in test else "–"
        row["McNemar p (Holm)"] = _p_cell(comparisons.adjusted_p(a, b, "mcnemar"))
        row["verdict"] = "differs" if comparisons.differs(a, b) else "indistinguishable"
        rows.append(row)
    return pd.DataFrame(rows)


def _p_cell(p: float | None) -> str:
    return fmt_p(p).removeprefix("p = ").removeprefix("p ")


def per_class_table(run: RunRecord) -> pd.DataFrame:
    rows = [{"class": c.name, "train n": c.train_count, "test n": c.support, "precision": c.precision,
             "recall": c.recall, "F1": c.f1, "minority": "yes" if c.minority else ""} for c in run.per_class]
    return pd.DataFrame(rows).round(SCORE_DECIMALS)


def best_runs(results: dict) -> list[RunRecord]:
    """The run chosen by validation, then the best of each other approach (by validation, else test macro-F1)."""
    runs = run_records(results)
    chosen = next((r for r in runs if r.run_id == results.get("best_by_validation")), None)
    bests: dict[str, RunRecord] = {}
    for run in sorted(runs, key=lambda r: (r.validation.macro_f1 if r.validation else -1, r.macro_f1), reverse=True):
        bests.setdefault(run.approach, run)
    if chosen:
        bests[chosen.approach] = chosen
    return sorted(bests.values(), key=lambda r: r is not chosen)


def best_runs_class_table(results: dict) -> pd.DataFrame:
    """Per class: train and test counts, minority mark (★), and the F1 of each of the best runs."""
    runs, names = best_runs(results), run_names(run_records(results))
    first = runs[0].per_class
    table = pd.DataFrame({"class": [c.name + (" ★" if c.minority else "") for c in first],
                          "train n": [c.train_count for c in first], "test n": [c.support for c in first]})
    for run in runs:
        table[f"F1 {names[run.run_id]}"] = [round(c.f1, SCORE_DECIMALS) for c in run.per_class]
    return table


def data_facts(results: dict) -> list[str]:
    ds = results["dataset"]
    train, test = ds["train_counts"], ds["test_counts"]
    minority = [c for c, flag in zip(ds["classes"], minority_mask(train)) if flag]
    skipped = ds.get("skipped_counts") or {}
    skipped_text = (", ".join(f"{n} {reason}" for reason, n in skipped.items()) if isinstance(skipped, dict)
                    else f"{len(ds.get('skipped', []))} files") if (skipped or ds.get("skipped")) else "none"
    few = [c for c, n in zip(ds["classes"], test) if 0 < n <= FEW_TEST_IMAGES]
    return [f"{len(ds['classes'])} classes; {sum(train)} training and {sum(test)} test images.",
            f"Imbalance: the largest class has {max(train)} training images, the smallest {min(train)} "
            f"(ratio {max(train) / max(min(train), 1):.1f}:1); minority classes (★, under half the median count): "
            f"{', '.join(minority) or 'none'}.",
            f"Classes with {FEW_TEST_IMAGES} or fewer test images (their F1 turns on single images): "
            f"{', '.join(few) or 'none'}.",
            f"Skipped files: {skipped_text}.",
            "Possible leaks (near-duplicate train/test pairs): " + (
                f"{len(ds['near_duplicates'])} pairs flagged." if ds.get("near_duplicates") is not None
                else "not checked here; the Dataset page lists them (cached-feature similarity)."),
            f"Dataset fingerprint: {ds.get('content_fingerprint') or ds.get('fingerprint', '?')}."]


def method_facts(results: dict) -> list[str]:
    from core.remedies import describe  # on use: numpy only, kept out of report imports

    runs = run_records(results)
    backbones = sorted({r.backbone_name for r in runs})
    bb = (runs[0].backbone if runs else None) or results.get("backbone", {})
    remedies = list(dict.fromkeys(r.remedy_label for r in runs))
    return [f"Features: {', '.join(backbones)} (ImageNet weights {bb.get('weights', '?')}), {bb.get('pool', '?')} "
            f"pooling, short side {bb.get('image_size', '?')} px, precision "
            f"{', '.join(sorted({r.precision or '?' for r in runs}))}, on "
            f"{', '.join(sorted({r.device or '?' for r in runs}))}.",
            f"Approaches: {', '.join(dict.fromkeys(r.approach for r in runs))}.",
            "Remedies: " + "; ".join(f"{label} ({describe(label)})" for label in remedies) + ".",
            "Choices made on validation, never on the test set: C, epochs, tau and offsets are chosen on "
            "out-of-fold scores of the training images (3 folds); the run to believe is the one with the best "
            "out-of-fold macro-F1. The test set is scored once per run.",
            "Intervals: stratified bootstrap over the test images (1,000 resamples, within each class). "
            "Comparisons: paired bootstrap on the same test images and McNemar's exact test, p-values "
            "Holm-adjusted over the comparisons shown together."]


def limitations(results: dict) -> list[str]:
    runs, ds = run_records(results), results["dataset"]
    seeds = sorted({r.seed or 0 for r in runs})
    notes = [f"{'One seed' if len(seeds) == 1 else f'{len(seeds)} seeds'} ({', '.join(map(str, seeds))}): "
             + ("differences between runs include the luck of one training run and one split; repeat with "
                "--seeds 0,1,2 to see it." if len(seeds) == 1 else "see the mean ± std over seeds on Compare."),
             f"One test set of {sum(ds['test_counts'])} images: every interval describes these images; new images "
             "from elsewhere may differ more.",
             "Intervals are 95% per comparison; only the p-values are adjusted for the many comparisons."]
    few = [c for c, n in zip(ds["classes"], ds["test_counts"]) if 0 < n <= FEW_TEST_IMAGES]
    if few:
        notes.append(f"{', '.join(few)}: {FEW_TEST_IMAGES} or fewer test images each, so their F1 (and the "
                     "macro averages that count them as one class in K) rest on single images.")
    tuned_on_test = [r for r in runs if r.chosen_with_test_visible]
    if tuned_on_test:
        notes.append(f"{len(tuned_on_test)} run(s) were tuned on What-if with the test scores on screen: their test "
                     "scores are not held-out estimates.")
    return notes


def reproducibility(results: dict) -> list[tuple[str, str]]:
    """What it takes to rerun this: versions, machine, precision, seeds, fingerprints, weights, the command."""
    runs, ds = run_records(results), results["dataset"]
    bb = (runs[0].backbone or {}) if runs else results.get("backbone", {})
    weights = bb.get("weights", "?")
    return [("TransferScope", _project_version()),
            ("packages (rendering machine)", ", ".join(f"{p} {_version(p)}" for p in KEY_PACKAGES)),
            ("machine (rendering)", f"{platform.platform()}; CPU {_cpu_model()}"),
            ("device, precision, runtime (runs)", "; ".join(sorted(
                {f"{r.device or '?'}, {r.precision or '?'}, {(r.backbone or {}).get('runtime', '?')}"
                 for r in runs}))),
            ("seeds", ", ".join(map(str, sorted({r.seed or 0 for r in runs})))),
            ("dataset fingerprint (content)", str(ds.get("content_fingerprint") or ds.get("fingerprint", "?"))),
            ("backbone weights", f"{weights} (checkpoint file hash {weights.rsplit('-', 1)[-1]})"),
            ("command", experiment_command(results.get("config") or (runs[0].config if runs else None) or {},
                                           runs))]


def experiment_command(config: dict, runs: list[RunRecord]) -> str:
    """The `python -m core experiment ...` line that reruns this grid (settings that differ from the defaults)."""
    from core.settings import SETTINGS  # on use: it loads the approach registry

    values = {"approaches": list(dict.fromkeys(r.approach for r in runs)),
              "remedies": list(dict.fromkeys(r.remedy_label for r in runs)), **config}
    seeds = sorted({r.seed or 0 for r in runs})
    if len(seeds) > 1:
        values.update(seeds=seeds, seed=seeds[0])
    parts = ["python -m core experiment"]
    for setting in SETTINGS:
        value = values.get(setting.name)
        if "experiment" not in setting.commands or value is None or value in ((), []):
            continue
        shown = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        default = setting.default
        if setting.name not in ALWAYS_IN_COMMAND and shown == (",".join(map(str, default))
                                                               if isinstance(default, (list, tuple)) else str(default)):
            continue
        parts.append(f"{setting.cli_flag} {shown}")
    return " ".join(parts + ["--out results.json"])


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _project_version() -> str:
    """The git commit of this checkout (with '+changes' when the tree differs), or 'unknown'."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return f"commit {commit}{' +local changes' if dirty else ''}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _title(results: dict) -> str:
    return f"Lab report: {Path(results['dataset'].get('root', '')).name}"


def _findings(results: dict, comparisons: Comparisons):
    return findings(run_records(results), comparisons, results.get("best_by_validation"))


def _finding_links(finding, names: dict, base_url: str, markdown: bool) -> str:
    links = []
    for run_id in finding.run_ids:
        url, name = run_link(run_id, base_url), names.get(run_id, run_id)
        links.append(f"[{escape_markdown(name)}]({url})" if markdown
                     else f"<a href='{html.escape(url)}'>{html.escape(name)}</a>")
    return ", ".join(links)


def _markdown_table(table: pd.DataFrame) -> str:
    """A Markdown table whose text cells are escaped (a class name with `|` or HTML stays one literal cell)."""
    return table.map(lambda value: escape_markdown(value) if isinstance(value, str) else value).to_markdown(index=False)


def render_markdown(results: dict, comparisons: Comparisons | None = None, base_url: str = DEFAULT_BASE_URL) -> str:
    """The lab report as Markdown (names shown literally)."""
    comparisons = comparisons or report_comparisons(results)
    runs = run_records(results)
    names, found = run_names(runs), _findings(results, comparisons)
    bullets = lambda items: [f"- {escape_markdown(item)}" for item in items]  # noqa: E731
    lines = [f"# {escape_markdown(_title(results))}", "", "## Data", "", *bullets(data_facts(results)), "",
             "## Method", "", *bullets(method_facts(results)), "", "## Results", "",
             "### Runs", "", _markdown_table(runs_table(runs)), ""]
    if runs:
        lines += ["### F1 per class of the best runs (★ minority)", "",
                  _markdown_table(best_runs_class_table(results)), ""]
    lines += ["## Findings", ""]
    for i, finding in enumerate(found, 1):
        lines += [f"{i}. {escape_markdown(finding.text)} *({escape_markdown(finding.evidence)})*"
                  + (f" Runs: {_finding_links(finding, names, base_url, True)}" if finding.run_ids else ""), ""]
    if len(comparisons):
        used = [pair for f in found for pair in f.pairs]
        lines += ["## Paired comparisons (B minus A)", "", PAIRED_NOTE, "",
                  _markdown_table(comparisons_table(runs, comparisons, used + comparisons.pairs)), ""]
    lines += ["## Limitations", "", *bullets(limitations(results)), "", "## Reproducibility", ""]
    lines += [f"- {escape_markdown(key)}: `{value}`" if key == "command" else f"- {escape_markdown(key)}: "
              f"{escape_markdown(value)}" for key, value in reproducibility(results)]
    lines += ["", "## Appendix: every run", ""]
    for run in runs:
        lines += [f"### {escape_markdown(names[run.run_id])} ({escape_markdown(run.run_id)})", "",
                  _markdown_table(per_class_table(run)), ""]
        if run.never_predicted:
            lines += [f"Never predicted: {', '.join(map(escape_markdown, run.never_predicted))}", ""]
        if run.no_test_support:
            unscored = ", ".join(map(escape_markdown, run.no_test_support))
            lines += [f"No test images (left out of the averages): {unscored}", ""]
    return "\n".join(lines)


def render_html(results: dict, comparisons: Comparisons | None = None, base_url: str = DEFAULT_BASE_URL) -> str:
    """The lab report as one self-contained HTML page (plotly.js inlined once) with tables and charts."""
    comparisons = comparisons or report_comparisons(results)
    ds, runs = results["dataset"], run_records(results)
    names, found = run_names(runs), _findings(results, comparisons)
    items = lambda texts: "<ul>" + "".join(f"<li>{html.escape(t)}</li>" for t in texts) + "</ul>"  # noqa: E731
    parts = ["<h2>Data</h2>", items(data_facts(results)),
             _figure_html(figures.class_distribution_figure(ds["classes"], ds["train_counts"], ds["test_counts"],
                                                            minority_mask(ds["train_counts"])), True),
             "<h2>Method</h2>", items(method_facts(results)), "<h2>Results</h2>",
             runs_table(runs).to_html(index=False, classes="runs")]
    if runs:
        chosen = best_runs(results)[0]
        parts += [_figure_html(figures.tradeoff_figure(runs), False),
                  "<h3>F1 per class of the best runs (★ minority)</h3>",
                  best_runs_class_table(results).to_html(index=False),
                  f"<h3>The chosen run: {html.escape(names[chosen.run_id])}</h3>",
                  _figure_html(figures.per_class_figure(chosen.per_class), False),
                  _figure_html(figures.confusion_matrix_figure(chosen.confusion_matrix, ds["classes"],
                                                               minority=minority_mask(ds["train_counts"])), False)]
        # the chosen run's head/middle/tail and calibration figures belong here once core.figures draws them
    parts.append("<h2>Findings</h2><ol class='findings'>" + "".join(
        f"<li>{html.escape(f.text)} <em>({html.escape(f.evidence)})</em>"
        + (f" <span class='runs'>Runs: {_finding_links(f, names, base_url, False)}</span>" if f.run_ids else "")
        + "</li>" for f in found) + "</ol>")
    if len(comparisons):
        used = [pair for f in found for pair in f.pairs]
        parts += [f"<h2>Paired comparisons (B minus A)</h2><p>{html.escape(PAIRED_NOTE)}</p>",
                  comparisons_table(runs, comparisons, used + comparisons.pairs).to_html(index=False)]
    parts += ["<h2>Limitations</h2>", items(limitations(results)), "<h2>Reproducibility</h2><dl>"
              + "".join(f"<dt>{html.escape(k)}</dt><dd>{'<code>' * (k == 'command')}{html.escape(v)}"
                        f"{'</code>' * (k == 'command')}</dd>" for k, v in reproducibility(results)) + "</dl>",
              "<h2>Appendix: every run</h2>"]
    for run in runs:
        parts += [f"<h3>{html.escape(names[run.run_id])} <small>({html.escape(run.run_id)})</small></h3>",
                  per_class_table(run).to_html(index=False)]
    title = html.escape(_title(results))
    style = ("body{font-family:sans-serif;margin:2em auto;max-width:1100px;line-height:1.45}table{border-collapse:"
             "collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}"
             "ol.findings li{margin:.5em 0}em{color:#555}dt{font-weight:bold}dd{margin:0 0 .4em 1em}"
             "code{background:#f4f4f4;padding:2px 4px;word-break:break-all}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>" \
           f"</head><body><h1>{title}</h1>{''.join(parts)}</body></html>"


def _figure_html(fig, include_js: bool) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=bool(include_js))


def write_report(results_path, out_path, fmt: str = "md", base_url: str = DEFAULT_BASE_URL) -> Path:
    """Render `results_path` as `fmt` ('md' or 'html') to `out_path`, atomically.

    Paired tests the results file lacks are computed from the run store it names (its `cache_dir`), when
    the runs are still there.
    """
    render = _renderer(fmt)
    results = read_results(results_path)
    cache_dir = (results.get("config") or {}).get("cache_dir")
    compute = store_comparer(RunStore(Path(cache_dir) / "runs")) if cache_dir else None
    text = render(results, report_comparisons(results, compute), base_url)
    out_path = Path(out_path)
    atomic_write_bytes(out_path, text.encode())
    return out_path


def _renderer(fmt: str):
    renderers = {"md": render_markdown, "html": render_html}
    if fmt not in renderers:
        raise ConfigError(f"unknown report format {fmt!r}; choose md or html")
    return renderers[fmt]
