"""The dashboard's server (`make run`, `make share`): app.py behind Host, Origin, framing, upload and rate checks.

`streamlit run serve.py` serves app.py as `st.App`, with Starlette middleware in front of every HTTP
request and websocket: a Host header the server is not meant for (a DNS-rebinding page) is refused, and so is
an Origin other than the server's own (scheme, host and port: a page on another localhost port is another
site); no other site may frame the pages; visitors from other machines (`make share`) can only read (their
uploads never reach Streamlit's upload endpoint, server metrics are not theirs to read), hold a few sessions
each and rerun a few times a second each. The rules live in core.sharing.
"""
import asyncio
import collections

import streamlit as st
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import PlainTextResponse

from core import sharing


class FrameGuard:
    """ASGI middleware: every HTTP response says that only the dashboard itself may frame it."""

    HEADERS = [(name.lower().encode(), value.encode()) for name, value in sharing.FRAME_HEADERS.items()]

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_framed(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        return await self.app(scope, receive, send_framed)


def _header(scope, name: bytes) -> str | None:
    return next((value.decode("latin-1") for key, value in scope.get("headers", []) if key == name), None)


def _client_ip(scope) -> str | None:
    return (scope.get("client") or (None,))[0]


class OriginGuard:
    """ASGI middleware: a request or websocket whose Origin is not the server's own is refused (403).

    Browsers send Origin on websockets and writes, so another site (or another port of this machine) cannot
    act in the owner's session; refused here, Streamlit never looks up the machine's external address for it.
    """

    REFUSAL = PlainTextResponse("Refused: this request comes from a page of another site (its Origin is not this "
                                "dashboard's own address); open the dashboard itself.", status_code=403)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and not sharing.same_origin(
                _header(scope, b"origin"), scope.get("scheme", "http"), _header(scope, b"host")):
            return await self.REFUSAL(scope, receive, send)
        return await self.app(scope, receive, send)


class NetworkReadOnly:
    """ASGI middleware of a shared server: HTTP writes (uploads) and server metrics are for this machine only."""

    REFUSAL = PlainTextResponse("This dashboard is shared read-only: uploads come only from the server machine.",
                                status_code=403)
    METRICS_REFUSAL = PlainTextResponse("Server metrics are readable on the server machine only.", status_code=403)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and not sharing.is_loopback(_client_ip(scope)):
            if not sharing.may_send(scope["method"], _client_ip(scope)):
                return await self.REFUSAL(scope, receive, send)
            if scope["path"].rstrip("/").endswith(sharing.LOOPBACK_ONLY_PATHS):
                return await self.METRICS_REFUSAL(scope, receive, send)
        return await self.app(scope, receive, send)


class ViewerLimits:
    """ASGI middleware: each address other than this machine holds a few sessions and reruns a few times a second.

    A viewer's extra tabs are refused (429); its widget changes beyond the rate wait, so however many sliders
    classmates move, the owner's page runs and refits keep most of the server.
    """

    REFUSAL = PlainTextResponse(f"Too many open tabs from your address (at most "
                                f"{sharing.VIEWER_SESSIONS_PER_ADDRESS}): close one and reload.", status_code=429)

    def __init__(self, app):
        self.app = app
        self.sessions: collections.Counter[str] = collections.Counter()
        self.throttles: dict[str, sharing.Throttle] = {}

    async def __call__(self, scope, receive, send):
        address = _client_ip(scope)
        if scope["type"] != "websocket" or sharing.is_loopback(address):
            return await self.app(scope, receive, send)
        if self.sessions[address] >= sharing.VIEWER_SESSIONS_PER_ADDRESS:
            return await self.REFUSAL(scope, receive, send)
        throttle = self.throttles.setdefault(address, sharing.Throttle(**sharing.VIEWER_MESSAGES_PER_ADDRESS))

        async def receive_limited():
            message = await receive()
            if message["type"] == "websocket.receive":
                while wait_s := throttle.wait_s():
                    await asyncio.sleep(wait_s)
            return message

        self.sessions[address] += 1
        try:
            return await self.app(scope, receive_limited, send)
        finally:
            self.sessions[address] -= 1


HOSTS = sharing.allowed_hosts(share=sharing.viewer_mode(),
                              listen=(st.get_option("server.address"), st.get_option("browser.serverAddress")))
app = st.App("app.py", middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=HOSTS, www_redirect=False),
                                   Middleware(OriginGuard), Middleware(FrameGuard), Middleware(NetworkReadOnly),
                                   Middleware(ViewerLimits)])
