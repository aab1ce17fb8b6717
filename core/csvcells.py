"""Every CSV the tool writes goes through here: text cells that a spreadsheet would run as a formula are escaped.

The OWASP CSV-injection rule: a cell starting with `=`, `+`, `-`, `@`, a tab or a carriage return gets a
leading `'`, so a class named `=HYPERLINK(...)` is shown as text. A cell already starting with `'` gets one
more, so `unescape_cell` gives back exactly what was written; the tool reads its own CSVs through `read_csv`.
Numbers are written as numbers (only text cells are escaped).
"""
from __future__ import annotations

import csv
import io

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"


def escape_cell(value):
    """`value` as a spreadsheet shows it as text: `'` before a formula start (or a leading `'`); non-text as is.

    >>> escape_cell("=HYPERLINK(\\"http://x\\")"), escape_cell("cat"), escape_cell(-1.5), escape_cell("'quoted")
    ('\\'=HYPERLINK("http://x")', 'cat', -1.5, "''quoted")
    """
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, QUOTE)):
        return QUOTE + value
    return value


def unescape_cell(value):
    """What `escape_cell` was given.

    >>> unescape_cell("'=1+1"), unescape_cell("''quoted"), unescape_cell("cat")
    ('=1+1', "'quoted", 'cat')
    """
    return value[1:] if isinstance(value, str) and value.startswith(QUOTE) else value


def csv_text(header, rows) -> str:
    """`rows` (sequences of cells) under `header` as CSV text, every text cell escaped."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow([escape_cell(cell) for cell in header])
    writer.writerows([escape_cell(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def frame_csv(frame) -> str:
    """A pandas DataFrame as CSV text (no index), its text cells escaped."""
    return _map_text(frame, escape_cell).to_csv(index=False)


def read_csv(source, **kwargs):
    """`pandas.read_csv` of a CSV this tool wrote, its text cells unescaped."""
    import pandas as pd

    return _map_text(pd.read_csv(source, **kwargs), unescape_cell)


def _map_text(frame, cell):
    """A copy of `frame` with `cell` applied to every value of its text (str or object) columns."""
    from pandas.api.types import is_string_dtype

    text = [name for name, dtype in frame.dtypes.items() if dtype == object or is_string_dtype(dtype)]
    return frame.assign(**{name: frame[name].map(cell) for name in text}) if text else frame
