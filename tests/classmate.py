"""A classmate's visit to a shared dashboard, run on a test host of its own (`ip netns exec`, see test_server.py).

`python tests/classmate.py ADDRESS PORT OWNER_TOKEN` prints one JSON object: what the classmate got for the page,
a foreign Host, an upload, the server metrics and one session more than an address may hold and an owner unlock with the right token (typed remotely).
"""
from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from streamlit.proto.WidgetStates_pb2 import WidgetState
from websockets.exceptions import InvalidStatus

from core.sharing import VIEWER_SESSIONS_PER_ADDRESS
from live import Server, Visitor

REBINDING_HOST = "attacker.example"
UNLOCKED = b"Owner actions are unlocked"


def widget_id(replies, kind: str, key: str) -> str:
    """The id of the `kind` widget (text_input, button) with this user key, as the page drew it."""
    for reply in replies:
        element = reply.delta.new_element
        if element.WhichOneof("type") == kind and getattr(element, kind).id.endswith(f"-{key}"):
            return getattr(element, kind).id
    raise LookupError(f"no {kind} {key!r} on the page")


def try_unlock(visitor: Visitor, token: str) -> dict:
    """Type the owner token on the Share page and click Unlock, as the page's own widgets would send it."""
    with visitor.stream() as websocket:
        replies = visitor.rerun(websocket, "share")
        typed = WidgetState(id=widget_id(replies, "text_input", "owner_token"), string_value=token)
        clicked = WidgetState(id=widget_id(replies, "button", "unlock"), trigger_value=True)
        after = visitor.rerun(websocket, "share", [typed, clicked])
    return {"unlocked": any(UNLOCKED in reply.SerializeToString() for reply in after)}


def foreign_host_websocket(server: Server) -> str:
    try:
        with Visitor(server, REBINDING_HOST).session():
            return "open"
    except InvalidStatus as err:
        return str(err.response.status_code)


def extra_session(visitor: Visitor, limit: int) -> str:
    """Open `limit` sessions at once, then one more: its HTTP status ("open" when it was let in)."""
    with contextlib.ExitStack() as tabs:
        for _ in range(limit):
            tabs.enter_context(visitor.stream())
        try:
            with visitor.stream():
                return "open"
        except InvalidStatus as err:
            return str(err.response.status_code)


def visit(address: str, port: int, token: str) -> dict:
    server = Server(address, port, Path("."), Path("/nonexistent"))
    classmate = Visitor(server)
    status, _, body = classmate.request("GET", "/")
    with classmate.session() as session_id:
        upload = classmate.upload(session_id, b"x" * 1024)
    return {
        "page_status": status, "page_is_html": b"<html" in body.lower(), "session": bool(session_id),
        "foreign_host_status": Visitor(server, REBINDING_HOST).request("GET", "/")[0],
        "foreign_host_websocket": foreign_host_websocket(server),
        "upload_status": upload,
        "metrics_status": classmate.request("GET", "/_stcore/metrics")[0],
        "extra_session": extra_session(classmate, VIEWER_SESSIONS_PER_ADDRESS),
        **try_unlock(classmate, token),
    }


if __name__ == "__main__":
    print(json.dumps(visit(sys.argv[1], int(sys.argv[2]), sys.argv[3])))
