"""Issue 30's polish, checked where it is declared: settings that say what they do."""
from builders import make_record
from core.settings import SETTINGS


def test_the_train_pages_settings_have_distinct_labels_none_a_near_duplicate_of_another():
    """Advanced held "Seed" beside "Seeds" and two settings labelled "... tau" that do different things."""
    labels = [setting.label for setting in SETTINGS if setting.on_page]
    assert len(set(labels)) == len(labels)
    first_words = [label.split(" (")[0].lower() for label in labels]
    for i, a in enumerate(first_words):
        for b in first_words[i + 1:]:
            assert not (a.startswith(b) or b.startswith(a)), f"{a!r} and {b!r} read alike"
    tau_labels = [label for label in labels if "tau" in label.lower()]
    assert len(tau_labels) == 2 and all("(" in label for label in tau_labels), tau_labels


def run(approach: str, run_id: str):
    return make_record(run_id=run_id, approach=approach, class_weight="none")


def marker_colors(runs) -> dict[str, str]:
    from core.figures import tradeoff_figure

    return {trace.legendgroup: trace.marker.color for trace in tradeoff_figure(runs).data if trace.legendgroup}


def test_an_approach_has_one_colour_whatever_else_is_shown():
    """Colours were dealt in order of appearance: logreg was blue beside nothing and green beside svm and head."""
    from core.style import APPROACH_COLORS

    alone, together = marker_colors([run("logreg", "a")]), marker_colors([run(a, a) for a in ("svm", "head", "logreg")])
    assert alone["logreg"] == together["logreg"] == APPROACH_COLORS["logreg"]
    assert len(set(together.values())) == 3 and len(set(APPROACH_COLORS.values())) == len(APPROACH_COLORS)


def test_scores_have_one_format_in_labels_and_reports():
    from core.naming import run_labels
    from core.style import score

    record = make_record(run_id="r-1", class_weight="none", remedy="none", macro_f1=0.57314, dataset={"root": "/d/x"})
    assert run_labels([record])["r-1"].endswith(score(0.57314)) and score(0.57314) == "0.573"
