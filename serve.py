"""The dashboard's server (`make run`, `make share`): app.py behind Host, framing and upload checks.

`streamlit run serve.py` serves app.py as `st.App`, with Starlette middleware in front of every HTTP
request and websocket: a Host header the server is not meant for (a DNS-rebinding page) is refused, no
other site may frame the pages, and visitors from other machines (`make share`) can only read (their
uploads never reach Streamlit's upload endpoint). The rules live in core.sharing.
"""
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


class NetworkReadOnly:
    """ASGI middleware of a shared server: HTTP writes (uploads) from other machines are refused (403)."""

    REFUSAL = PlainTextResponse("This dashboard is shared read-only: uploads come only from the server machine.",
                                status_code=403)

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        client_ip = (scope.get("client") or (None,))[0]
        if scope["type"] == "http" and not sharing.may_send(scope["method"], client_ip):
            return await self.REFUSAL(scope, receive, send)
        return await self.app(scope, receive, send)


HOSTS = sharing.allowed_hosts(share=sharing.viewer_mode())
app = st.App("app.py", middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=HOSTS, www_redirect=False),
                                   Middleware(FrameGuard), Middleware(NetworkReadOnly)])
