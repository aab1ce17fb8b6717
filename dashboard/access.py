"""Who may do what: viewer mode, the owner's unlock, the read-only checks behind every action, viewable paths
and how paths are shown to viewers (relative to the served dataset only).

A shared dashboard (`make share`) is read-only until the owner types the token on the server machine.
Pages disable their buttons with `can_act`; the actions in `dashboard.state` check `require_owner` again.
"""
from __future__ import annotations

import os

import streamlit as st

from core import sharing
from core.errors import ReadOnlyError
from core.records import RunRecord
from core.paths import cache_dir, demo_dir

OWNER_KEY = "owner_unlocked"  # session flag: the owner typed the token in this browser session


def viewer_mode() -> bool:
    """Whether the server shares the dashboard read-only (`make share`)."""
    return sharing.viewer_mode()


def can_act() -> bool:
    """Whether this session may change things: always, unless the dashboard is shared and still locked.

    The one check behind every action (launch, cancel, delete, import, dataset folder). Pages disable
    their buttons with it; the actions below check it again, since a browser can send a disabled
    widget's value anyway.
    """
    return not viewer_mode() or bool(st.session_state.get(OWNER_KEY))


def require_owner(action: str) -> None:
    """Raise ReadOnlyError naming `action` unless this session may act."""
    if not can_act():
        raise ReadOnlyError(f"cannot {action}: this dashboard is shared read-only; "
                            "the owner unlocks actions with the token on the Share page")


def read_only_note(action: str) -> bool:
    """Explain to a viewer why they cannot `action` and how the owner unlocks it; return can_act()."""
    if can_act():
        return True
    st.info(f"Read-only: this dashboard is shared for viewing, so you cannot {action} here. The owner unlocks "
            "actions on the Share page with the token printed by `make share` (or `python -m core owner-token`).",
            icon=":material/lock:")
    return False


def client_is_local() -> bool:
    """Whether this browser connects from the server machine itself (Streamlit gives no IP for loopback)."""
    return sharing.is_loopback(st.context.ip_address)


def unlock(token: str) -> bool:
    """Unlock actions for this browser session if `token` is the owner's and typed on this machine."""
    if not client_is_local() or not sharing.is_owner(token, cache_dir()):
        return False
    st.session_state[OWNER_KEY] = True
    return True


def lock() -> None:
    st.session_state.pop(OWNER_KEY, None)


def server_data_dir() -> str:
    """The dataset folder the server shows, the only one viewers see: env TRANSFERSCOPE_DATA, else the demo's."""
    return os.environ.get("TRANSFERSCOPE_DATA") or str(demo_dir())


def viewable_paths(paths: list[str]) -> tuple[list[str], int]:
    """The image paths this session may see, and how many were held back.

    Viewers see only files inside the server's dataset folder, whatever paths a run recorded.
    """
    if can_act():
        return list(paths), 0
    root = server_data_dir()
    shown = [path for path in paths if sharing.is_within(path, root)]
    return shown, len(paths) - len(shown)


def shown_path(path: str) -> str:
    """`path` as this session may see it: whole for the owner; for viewers relative to the served dataset."""
    return str(path) if can_act() else path_names().name(path, sharing.OTHER_FOLDER)


def shown_text(text: str) -> str:
    """A message as this session may see it: for viewers, every path in it relative to the served dataset."""
    return str(text) if can_act() else path_names().text(text)


def shown_record(record: RunRecord) -> RunRecord:
    """A run record as this session may see it (for viewers a copy: dataset folder and paths renamed)."""
    return record if can_act() else path_names().record(record)


def path_names() -> sharing.PathNames:
    """How viewers' paths are renamed: relative to the served dataset, the cache folder's by their place in it."""
    return sharing.PathNames(server_data_dir(), cache_dir())

