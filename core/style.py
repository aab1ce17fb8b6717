"""How results look, declared once for the pages, the reports and the CLI: one colour per approach, colours
for classes on maps, and one number format for scores.

>>> score(0.5731), score_change(-0.0004), score_interval(0.5731, 0.51, 0.6349), approach_color("svm")
('0.573', '+0.000', '0.573 [0.510, 0.635]', '#3969AC')
"""
from __future__ import annotations

from plotly.colors import qualitative

from core.approaches import APPROACHES

SCORE_DECIMALS = 3  # accuracy, macro-F1, recall, F1, ECE...: fractions in [0, 1] shown to 3 decimals everywhere
SCORE_FORMAT = f"%.{SCORE_DECIMALS}f"  # Streamlit number columns (printf style)
SCORE_CHANGE_FORMAT = f"%+.{SCORE_DECIMALS}f"
SCORE_HOVER = f".{SCORE_DECIMALS}f"  # Plotly hover templates (d3 style): %{y:.3f}

APPROACH_PALETTE = ("#3969AC", "#E68310", "#11A579", "#7F3C8D", "#F2B701", "#008695", "#CF1C90")  # Plotly's Bold
APPROACH_COLORS = dict(zip(APPROACHES, APPROACH_PALETTE))  # in registry order: the same colour on every page
OTHER_APPROACH_COLOR = "#7F7F7F"  # an approach a newer copy registered (an imported run)

# classes on the feature map: Plotly's D3 first (ten colours far apart), then Alphabet; Dark24 began with a pink
# and a magenta that looked alike
CLASS_COLORS = tuple(qualitative.D3) + tuple(qualitative.Alphabet)


SAME_SPEED = 1.1  # within 10%: "about as fast", never "1.0× faster"


def approach_color(name: str) -> str:
    return APPROACH_COLORS.get(name, OTHER_APPROACH_COLOR)


def score(value: float) -> str:
    """A score as every page and report shows it: '0.573'."""
    return f"{value:.{SCORE_DECIMALS}f}"


def score_change(value: float) -> str:
    """A change of a score, signed: '+0.012'; one that rounds to 0 reads '+0.000', never '-0.000'."""
    return f"{round(value, SCORE_DECIMALS) + 0.0:+.{SCORE_DECIMALS}f}"


def score_interval(value: float, low: float | None, high: float | None) -> str:
    """'0.847 [0.729, 0.927]': a score with its 95% interval, when recorded."""
    return score(value) + (f" [{score(low)}, {score(high)}]" if low is not None and high is not None else "")


def change_interval(delta: float, low: float, high: float) -> str:
    """'+0.034 [-0.012, +0.081]': a change of a score with its 95% interval."""
    return f"{score_change(delta)} [{score_change(low)}, {score_change(high)}]"


def times(factor: float) -> str:
    """A speed-up factor: '41×', '3.2×'.

    >>> times(41.3), times(3.24)
    ('41×', '3.2×')
    """
    return f"{factor:.{0 if factor >= 10 else 1}f}×"


def faster(fast: str, slow: str, factor: float, verb: str = "is") -> str:
    """'svm is 41× faster than head', or 'svm is about as fast as head' under `SAME_SPEED`.

    >>> faster("Linear head", "SVM", 1.04)
    'Linear head is about as fast as SVM'
    """
    return f"{fast} {verb} about as fast as {slow}" if factor < SAME_SPEED else \
        f"{fast} {verb} {times(factor)} faster than {slow}"
