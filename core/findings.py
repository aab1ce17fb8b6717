"""Findings: what a set of runs on one dataset shows, as short sentences that carry their numbers and test.

`Comparisons` holds the paired tests of runs on the same test images (core.stats.paired_comparison,
B minus A) and adjusts their p-values with Holm's method over the family shown together: the pairs
an experiment compares (same seed, same approach or same remedy) plus those the findings need. A
difference is called a difference only when its 95% interval excludes 0 *and* its Holm-adjusted
p < 0.05; anything else is said to be indistinguishable, never "better".

`findings(records, comparisons)` returns, in this order: the run chosen by validation and whether the
test confirms it; the approaches compared (fine-tuning against frozen features when both ran) with
their time ratio with and without the feature extraction; rare classes at F1 ≈ 0 and the remedy that
lifts them (per-class paired tests, Holm over every remedy tried on them); what each remedy did or did
not do, with the SVM's reason where a weight cannot move its boundary; and the count of comparisons
that are noise.
"""
from __future__ import annotations

import functools
import itertools
import operator
from dataclasses import dataclass
from typing import Callable

from core.errors import RunStoreError
from core.naming import dataset_key, run_names
from core.records import ClassRow, RunRecord
from core.run_view import RunView
from core.metric_labels import LABELS
from core.stats import METRICS, holm
from core.style import change_interval, faster, score, score_interval, times

ALPHA = 0.05
NEAR_ZERO_F1 = 0.1  # a class this poorly recognised counts as lost
FEW_TEST_IMAGES = 3  # a class with this few test images decides its F1 by one or two images
BASELINE_REMEDY = "none"
FINETUNE = "finetune"


@dataclass(frozen=True)
class Finding:
    """One sentence a student can hand in: `text` (with its numbers), `evidence` (the test behind it, short),
    `run_ids` (the runs it is about: each opens on the Results page) and `pairs` (the comparisons it uses)."""

    topic: str
    text: str
    evidence: str
    run_ids: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...] = ()


class Comparisons:
    """Paired tests (B minus A) of a family of run pairs, with Holm-adjusted p-values over the family.

    `known`: comparisons already computed (a results file's `comparisons`); `compute(run_a, run_b)`:
    computes one (None when the runs saw different test images). Pairs neither can give are left out.
    """

    def __init__(self, pairs, known=(), compute: Callable[[str, str], dict | None] | None = None):
        stored = {(c["run_a"], c["run_b"]): c for c in known}
        self._tests: dict[tuple[str, str], dict] = {}
        for a, b in dict.fromkeys(pairs):
            test = stored.get((a, b)) or _flipped(stored.get((b, a))) or (compute(a, b) if compute else None)
            if test is not None and (b, a) not in self._tests:
                self._tests[(a, b)] = test
        self._adjusted = {metric: dict(zip(self._tests, holm([t.get(key) for t in self._tests.values()])))
                          for metric, key in (("macro_f1", "macro_f1_p"), ("mcnemar", "mcnemar_p"))}

    def __len__(self) -> int:
        return len(self._tests)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return list(self._tests)

    def get(self, a: str, b: str) -> dict | None:
        """The test of B minus A (a stored A minus B is flipped), or None when it is not in the family."""
        return self._tests.get((a, b)) or _flipped(self._tests.get((b, a)))

    def adjusted_p(self, a: str, b: str, metric: str = "macro_f1") -> float | None:
        """The Holm-adjusted p of the pair's macro-F1 change ('macro_f1') or McNemar test ('mcnemar')."""
        table = self._adjusted[metric]
        return table.get((a, b), table.get((b, a)))

    def differs(self, a: str, b: str) -> bool:
        """True when B's macro-F1 differs from A's beyond noise: interval excludes 0 and adjusted p < ALPHA
        (results written before p-values were recorded: the interval alone)."""
        test = self.get(a, b)
        if not test or test["macro_f1_low"] <= 0 <= test["macro_f1_high"]:
            return False
        p = self.adjusted_p(a, b)
        return p < ALPHA if p is not None else "macro_f1_p" not in test


def store_comparer(store) -> Callable[[str, str], dict | None]:
    """`compute(run_a, run_b)` for `Comparisons` from a RunStore's predictions (None for runs it lacks)."""
    @functools.lru_cache(maxsize=None)
    def stored(run_id: str) -> RunView | None:
        try:
            view = RunView.from_store(store, run_id)
            view.predictions  # read now: a run saved without predictions is left out here
            return view
        except RunStoreError:  # not in this store, or saved without predictions
            return None

    def compute(run_a: str, run_b: str) -> dict | None:
        a, b = stored(run_a), stored(run_b)
        return a.paired_with(b) if a and b else None
    return compute


def family_note(comparisons: Comparisons, a: str, b: str) -> str:
    """What Holm's adjustment says of one pair picked from a family (a two-run diff), in a sentence."""
    if comparisons.adjusted_p(a, b, "mcnemar") is None:
        return ("This pair is not among the group's comparisons (same seed, same approach or remedy): its p-value "
                "is unadjusted, and picking one pair among many makes a small p likelier by chance.")
    return (f"Adjusted with Holm over the {len(comparisons)} comparisons of this group: McNemar "
            f"{fmt_p(comparisons.adjusted_p(a, b, 'mcnemar'))}, macro-F1 {fmt_p(comparisons.adjusted_p(a, b))}"
            f" ({'a difference beyond noise' if comparisons.differs(a, b) else 'indistinguishable'}).")


def tries_note(tried: dict, current) -> str:
    """What Holm says of the change shown after several settings were tested against one start run (What-if).

    `tried`: `{setting: macro-F1 p of its paired test}` in this session; `current`: the setting shown.
    """
    if len(tried) < 2 or current not in tried:
        return ""
    adjusted = dict(zip(tried, holm(list(tried.values()))))[current]
    return (f"You have tested {len(tried)} settings against this run; adjusted with Holm over them, the macro-F1 "
            f"change shown has {fmt_p(adjusted)} (picking the best of many tries makes a small p likelier by chance).")


def _flipped(test: dict | None) -> dict | None:
    """A minus B from a B minus A test: changes negated, intervals mirrored, discordant counts swapped."""
    if test is None:
        return None
    flipped = {**test, "run_a": test.get("run_b"), "run_b": test.get("run_a"),
               "n_a_only": test.get("n_b_only"), "n_b_only": test.get("n_a_only")}
    for metric in METRICS:
        flipped.update({f"{metric}_delta": -test[f"{metric}_delta"], f"{metric}_low": -test[f"{metric}_high"],
                        f"{metric}_high": -test[f"{metric}_low"]})
    if "class_f1" in test:
        flipped["class_f1"] = [{**c, "delta": -c["delta"], "low": -c["high"], "high": -c["low"]}
                               for c in test["class_f1"]]
    return flipped


def experiment_pairs(records: list[RunRecord]) -> list[tuple[str, str]]:
    """The pairs an experiment compares: same dataset and seed, and the same approach or the same remedy."""
    return [(a.run_id, b.run_id) for a, b in itertools.combinations(records, 2)
            if dataset_key(a) == dataset_key(b) and (a.seed or 0) == (b.seed or 0)
            and (a.approach == b.approach or a.remedy_label == b.remedy_label)]


def family_pairs(records: list[RunRecord], best_id: str | None = None) -> list[tuple[str, str]]:
    """Every pair shown together: the experiment's pairs plus the chosen run against the test's best and the
    best run of each approach against the reference approach's best."""
    extra = []
    chosen = _by_id(records).get(best_id) or _best_by_validation(records)
    if chosen:
        extra.append((chosen.run_id, max(records, key=lambda r: r.macro_f1).run_id))
    reference, others = _approach_bests(records)
    extra += [(reference.run_id, other.run_id) for other in others]
    return [pair for pair in dict.fromkeys(experiment_pairs(records) + extra) if pair[0] != pair[1]]


def _by_id(records: list[RunRecord]) -> dict[str, RunRecord]:
    return {r.run_id: r for r in records}


def _validation(record: RunRecord) -> float | None:
    """Validation macro-F1 on the basis `best_by_validation` compares: cross-fitted where the run chose on it."""
    scores = record.validation_cross_fitted or record.validation
    return scores.macro_f1 if scores else None


def _best_by_validation(records: list[RunRecord]) -> RunRecord | None:
    scored = [r for r in records if _validation(r) is not None]
    return max(scored, key=_validation) if scored else None


def _approach_bests(records: list[RunRecord]) -> tuple[RunRecord | None, list[RunRecord]]:
    """The best run of each approach (by validation, else test macro-F1): the reference (fine-tuning when it ran,
    else the overall choice) and the others."""
    bests: dict[str, RunRecord] = {}
    for record in records:
        key = (_validation(record) or 0.0, record.macro_f1)
        if record.approach not in bests or key > (_validation(bests[record.approach]) or 0.0,
                                                      bests[record.approach].macro_f1):
            bests[record.approach] = record
    if len(bests) < 2:
        return None, []
    reference = bests.get(FINETUNE) or _best_by_validation(list(bests.values())) or next(iter(bests.values()))
    return reference, [r for r in bests.values() if r is not reference]


def fmt_delta(test: dict, metric: str = "macro_f1") -> str:
    """A paired test's change of `metric` with its 95% interval (`core.style.change_interval`)."""
    return change_interval(test[f"{metric}_delta"], test[f"{metric}_low"], test[f"{metric}_high"])


def fmt_p(p: float | None) -> str:
    """'p = 0.03' (two significant digits), 'p < 0.001', or 'p not testable' (a change resampling never varies)."""
    return "p not testable" if p is None else f"p = {p:.2g}" if p >= 0.001 else "p < 0.001"


def findings(records: list[RunRecord], comparisons: Comparisons, best_id: str | None = None) -> list[Finding]:
    """The findings of `records` (runs on one dataset), in reading order; see the module docstring.

    >>> runs = [RunRecord.from_json(run) for run in results["runs"]]  # doctest: +SKIP
    >>> found = findings(runs, Comparisons(family_pairs(runs), results["comparisons"]))  # doctest: +SKIP
    >>> found[0].text  # doctest: +SKIP
    'logreg · offsets is the run chosen by validation ...'
    """
    if not records:
        return []
    names = run_names(records)
    context = _Context(records, comparisons, names)
    builders = (_best_finding(context, best_id), *_approach_findings(context), *_rare_findings(context),
                *_remedy_findings(context), _noise_finding(context))
    return [finding for finding in builders if finding is not None]


@dataclass(frozen=True)
class _Context:
    records: list[RunRecord]
    comparisons: Comparisons
    names: dict[str, str]

    def name(self, record: RunRecord) -> str:
        return self.names[record.run_id]

    def family(self) -> str:
        return f"Holm over {len(self.comparisons)} paired comparisons"

    def change(self, a: RunRecord, b: RunRecord, metric: str = "macro_f1", named: bool = True) -> str:
        """'macro-F1 +0.034 [−0.012, +0.081], p = 0.4' of B minus A (the adjusted p, for macro-F1)."""
        test = self.comparisons.get(a.run_id, b.run_id)
        text = f"{LABELS[metric]} " * named + fmt_delta(test, metric)
        return text + (f", {fmt_p(self.comparisons.adjusted_p(a.run_id, b.run_id))}" if metric == "macro_f1"
                       else "")


def with_interval(record: RunRecord, key: str = "macro_f1") -> str:
    """A run's test score with its bootstrap interval, where recorded: '0.664 [0.601, 0.720]'."""
    interval = record.interval(key) or (None, None)
    return score_interval(record.score(key), *interval)


def _best_finding(ctx: _Context, best_id: str | None) -> Finding | None:
    chosen = _by_id(ctx.records).get(best_id) or _best_by_validation(ctx.records)
    if chosen is None:
        return None
    top = max(ctx.records, key=lambda r: r.macro_f1)
    validation, high = _validation(chosen), (chosen.interval("macro_f1") or (0, chosen.macro_f1))[1]
    text = (f"{ctx.name(chosen)} is the run chosen by validation (validation macro-F1 {score(validation)} on the "
            f"training images); on the test set it scores {with_interval(chosen)}")
    text += "." if validation <= high else ", below its validation score: validation was optimistic."
    pairs: tuple = ()
    if top is chosen:
        text += " No other run scores higher on the test set: the test confirms the choice."
        evidence = "test macro-F1 with its 95% bootstrap interval"
    elif ctx.comparisons.get(chosen.run_id, top.run_id) is None:
        inside = top.macro_f1 <= high
        text += (f" The test's best, {ctx.name(top)} ({score(top.macro_f1)}), lies "
                 + ("inside its interval: the test confirms the choice within noise." if inside else
                    "above its interval: the test does not confirm the choice."))
        evidence = "unpaired: the two runs saw different test images"
    else:
        pairs = ((chosen.run_id, top.run_id),)
        verdict = ("the test does not confirm the choice" if ctx.comparisons.differs(*pairs[0])
                   else "indistinguishable, so the test confirms the choice within noise")
        text += f" The test's best, {ctx.name(top)}, differs by {ctx.change(chosen, top)}: {verdict}."
        evidence = f"paired bootstrap 95% interval; {ctx.family()}"
    return Finding("best", text, evidence, tuple(dict.fromkeys((chosen.run_id, top.run_id))), pairs)


def _speed(reference: RunRecord, other: RunRecord) -> str:
    """'svm fits 41× faster than head (3.2× counting the one-off feature extraction)'."""
    def seconds(record, with_extraction):
        return max(record.fit_seconds + ((record.extract_seconds or 0.0) if with_extraction else 0.0), 1e-3)

    ratios = [seconds(other, w) / seconds(reference, w) for w in (False, True)]
    fast, slow = (reference, other) if ratios[0] >= 1 else (other, reference)
    shown = [r if r >= 1 else 1 / r for r in ratios]
    return (f"{faster(fast.approach, slow.approach, shown[0], 'fits')} "
            f"({times(shown[1])} counting the one-off feature extraction)")


def _approach_findings(ctx: _Context) -> list[Finding]:
    reference, others = _approach_bests(ctx.records)
    found = []
    for other in others:
        pair = (reference.run_id, other.run_id)
        test = ctx.comparisons.get(*pair)
        lead = "Fine-tuning against frozen features" if FINETUNE in (reference.approach, other.approach) \
            else "Approaches"
        if test is None:
            text = (f"{lead}: {ctx.name(other)} scores macro-F1 {with_interval(other)}, {ctx.name(reference)} "
                    f"{with_interval(reference)} (different test images: no paired test). {_speed(reference, other)}.")
            found.append(Finding("approaches", text, "unpaired intervals", pair))
            continue
        verdict = "a difference beyond noise" if ctx.comparisons.differs(*pair) else "indistinguishable"
        changes = "; ".join(ctx.change(reference, other, m) for m in ("accuracy", "macro_f1", "balanced_accuracy"))
        text = (f"{lead} (each approach's best run by validation): {ctx.name(other)} minus {ctx.name(reference)}: "
                f"{changes}: {verdict}. {_speed(reference, other)}.")
        found.append(Finding("approaches", text, f"paired bootstrap 95% intervals; {ctx.family()}", pair, (pair,)))
    return found


def _class_row(record: RunRecord, k: int) -> ClassRow:
    return record.per_class[k]


def _rare_findings(ctx: _Context) -> list[Finding]:
    """Classes at F1 ≤ NEAR_ZERO_F1 under some run, and per approach the remedy that lifts them most."""
    classes = ctx.records[0].classes
    lifts = []  # (class k, approach baseline, remedy run, per-class test): every remedy tried, for Holm
    lost = {k: [r for r in ctx.records if _class_row(r, k).support and _class_row(r, k).f1 <= NEAR_ZERO_F1]
            for k in range(len(classes))}
    for k, runs in lost.items():
        for base in _baselines(runs):
            for other in ctx.records:
                test = _same_approach_test(ctx, base, other)
                if test and "class_f1" in test:
                    lifts.append((k, base, other, test["class_f1"][k]))
    adjusted = holm([lift[3]["p"] for lift in lifts])
    found = []
    for k, runs in lost.items():
        if runs:
            found.append(_rare_finding(ctx, k, runs, [(lift, p) for lift, p in zip(lifts, adjusted) if lift[0] == k],
                                       len(lifts)))
    return found


def _baselines(runs: list[RunRecord]) -> list[RunRecord]:
    """Per approach, the run to lift from: its no-remedy run if that one lost the class, else the first that did."""
    chosen: dict[str, RunRecord] = {}
    for run in runs:
        if run.approach not in chosen or run.remedy_label == BASELINE_REMEDY:
            chosen[run.approach] = run
    return list(chosen.values())


def _same_approach_test(ctx: _Context, base: RunRecord, other: RunRecord) -> dict | None:
    if other is base or other.approach != base.approach:
        return None
    return ctx.comparisons.get(base.run_id, other.run_id)


def _rare_finding(ctx: _Context, k: int, runs: list[RunRecord], lifts: list, n_tests: int) -> Finding:
    row = _class_row(runs[0], k)
    kind = "minority class" if row.minority else "class"
    text = (f"The {kind} {row.name} ({row.train_count if row.train_count is not None else '?'} training, "
            f"{row.support} test images) "
            f"has F1 ≤ {NEAR_ZERO_F1:g} under {', '.join(ctx.name(r) for r in runs)}.")
    run_ids, pairs = [r.run_id for r in runs], []
    for approach in dict.fromkeys(base.approach for (_, base, _, _), _ in lifts):
        tried = [(lift, p) for lift, p in lifts if lift[1].approach == approach]
        (_, base, best, change), p = max(tried, key=lambda item: item[0][3]["delta"])
        if change["delta"] <= 0:
            text += f" No remedy tried raises it under {approach}."
            continue
        real = p is not None and p < ALPHA and change["low"] > 0
        before, after = _class_row(base, k).f1, _class_row(best, k).f1
        text += (f" Under {approach}, {best.remedy_label} lifts it most from {ctx.name(base)}: F1 {score(before)} → "
                 f"{score(after)}, {change_interval(change['delta'], change['low'], change['high'])}, {fmt_p(p)}: "
                 + ("more than noise." if real else "it could be noise."))
        run_ids.append(best.run_id)
        pairs.append((base.run_id, best.run_id))
    if row.support <= FEW_TEST_IMAGES:
        text += (f" With {row.support} test image{'s' * (row.support != 1)}, this class's F1 turns on one "
                 "image: read it as a hint, not a measurement.")
    evidence = f"per-class paired bootstrap; Holm over the {n_tests} remedy-vs-baseline tests of lost classes"
    return Finding("rare", text, evidence, tuple(dict.fromkeys(run_ids)), tuple(pairs))


def _remedy_findings(ctx: _Context) -> list[Finding]:
    """Per approach: which remedies changed macro-F1 beyond noise against its no-remedy run, which did not, and
    for the SVM why a class weight could not move it."""
    found = []
    for approach in dict.fromkeys(r.approach for r in ctx.records):
        runs = [r for r in ctx.records if r.approach == approach]
        base = next((r for r in runs if r.remedy_label == BASELINE_REMEDY), None)
        tested = [(r, ctx.comparisons.get(base.run_id, r.run_id)) for r in runs if base and r is not base]
        tested = [(r, t) for r, t in tested if t is not None]
        if not tested:
            continue
        real = [r for r, _ in tested if ctx.comparisons.differs(base.run_id, r.run_id)]
        remedies = [r.remedy_label for r, _ in tested]
        # remedies tried more than once (seeds): the runs' full names
        label = operator.attrgetter("remedy_label") if len(set(remedies)) == len(remedies) else ctx.name
        same = [r for r, t in tested if t["n_a_only"] == t["n_b_only"] == 0 and r not in real]
        noise = [r for r, _ in tested if r not in real and r not in same]
        parts = [f"{label(r)} changes macro-F1 by {ctx.change(base, r, named=False)}" for r in real]
        if same:
            parts.append(f"{', '.join(map(label, same))} predict{'s' * (len(same) == 1)} every test image "
                         f"as {BASELINE_REMEDY} does")
        if noise:
            parts.append(", ".join(f"{label(r)} ({ctx.change(base, r, named=False)})" for r in noise)
                         + f" {'is' if len(noise) == 1 else 'are'} indistinguishable from {BASELINE_REMEDY}")
        text = f"Remedies under {approach}, against {ctx.name(base)}: " + "; ".join(parts) + "."
        text += "".join(f" {note}" for note in _svm_reasons(ctx, [r for r, _ in tested]))
        found.append(Finding("remedies", text, f"paired bootstrap 95% intervals; {ctx.family()}",
                             (base.run_id, *(r.run_id for r, _ in tested)),
                             tuple((base.run_id, r.run_id) for r, _ in tested)))
    return found


def _svm_reasons(ctx: _Context, runs: list[RunRecord]) -> list[str]:
    """Why class weights left a class lost under an SVM: its support vectors sit inside their bound C x weight."""
    notes = []
    for run in runs:
        if run.approach != "svm" or run.class_weight == "none":
            continue
        free = [row for row in run.per_class if row.support and row.f1 <= NEAR_ZERO_F1
                and row.support_vectors and row.at_bound == 0]
        if not free:
            continue
        listed = ", ".join(f"{row.name} ({row.support_vectors} support vectors)" for row in free)
        notes.append(f"Why {run.remedy_label} leaves {', '.join(row.name for row in free)} at F1 ≤ "
                     f"{NEAR_ZERO_F1:g} in {ctx.name(run)}: no support vector of {listed} sits at its bound "
                     "C x weight, so the fit already satisfies them with slack to spare and a larger weight for "
                     "them alone leaves the boundary where it is; a decision offset (remedy offsets) or a lower C "
                     "can move it.")
    return notes


def _noise_finding(ctx: _Context) -> Finding | None:
    pairs = ctx.comparisons.pairs
    if not pairs:
        return None
    real = [pair for pair in pairs if ctx.comparisons.differs(*pair)]
    raw = [pair for pair in pairs if (ctx.comparisons.get(*pair).get("macro_f1_p") or 1.0) < ALPHA]
    text = (f"Of the {len(pairs)} paired comparisons of this report, {len(real)} show a macro-F1 difference beyond "
            f"noise (interval excluding 0 and p < {ALPHA:g} after Holm's adjustment; {len(raw)} would pass without "
            f"it); the other {len(pairs) - len(real)} are indistinguishable: their order is not evidence of "
            "which run is better.")
    return Finding("noise", text, ctx.family(), (), tuple(real))
