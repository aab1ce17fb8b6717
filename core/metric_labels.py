"""The headline metrics' names as people read them, declared once: tables, findings, figures, pickers, pages.

`LABELS[key]` is the label in sentences and table columns, `title(key)` the same with a capital (page scores,
legends), `short(key)` the one for narrow table columns.

>>> title("balanced_accuracy"), short("balanced_accuracy"), LABELS["macro_f1"]
('Balanced accuracy', 'balanced acc.', 'macro-F1')
"""
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "macro_f1": "macro-F1",
          "weighted_f1": "weighted F1"}
SHORT = {"balanced_accuracy": "balanced acc."}
RANKING = "macro_f1"  # what pickers show and runs are chosen by: accuracy flatters the big classes


def title(key: str) -> str:
    label = LABELS[key]
    return label[0].upper() + label[1:]


def short(key: str) -> str:
    return SHORT.get(key, LABELS[key])


HEADLINE_METRICS = {key: title(key) for key in LABELS}  # the Results page's scores, in this order
