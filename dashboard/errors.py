"""The dashboard's error boundary: user errors as messages, bugs as tracebacks for the owner (and the tests) only."""
from __future__ import annotations

import contextlib
import os
import traceback

import streamlit as st

from core.errors import TransferScopeError
from core.report import escape_markdown
from dashboard import access

STRICT_ENV = "TRANSFERSCOPE_STRICT"  # "1" (tests): guard re-raises unexpected errors instead of showing them


def show_failure(message: str, details: str | None = None) -> None:
    """A readable error box (shown literally: messages quote names), technical details folded away for the owner.

    Viewers see the paths in `message` relative to the served dataset only.
    """
    st.error(escape_markdown(access.shown_text(message)), icon=":material/error:")
    if details and access.can_act():
        with st.expander("Details"):
            st.code(details, language=None)


@contextlib.contextmanager
def guard():
    """Show errors raised in the block as messages instead of tracebacks (Streamlit's rerun/stop pass).

    An unexpected error (not a TransferScopeError) is a bug: with env TRANSFERSCOPE_STRICT=1 (the tests)
    it propagates, so Streamlit and the tests see it. Viewers see only its type, never its message or trace.
    """
    try:
        yield
    except TransferScopeError as err:
        show_failure(str(err))
    except Exception as err:  # noqa: BLE001 - the page must stay usable whatever went wrong
        if os.environ.get(STRICT_ENV) == "1":
            raise
        if access.can_act():
            show_failure(f"Something went wrong: {type(err).__name__}: {err}", traceback.format_exc())
        else:
            show_failure(f"Something went wrong ({type(err).__name__}); the owner sees the details.")
