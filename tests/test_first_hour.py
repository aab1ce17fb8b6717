"""Issue 30's polish, checked where it is declared: settings that say what they do."""
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
