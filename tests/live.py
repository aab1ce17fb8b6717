"""A real dashboard server for tests, and a visitor's browser reduced to Streamlit's HTTP and websocket protocol.

`served(...)` starts `streamlit run <script>` on a free port (private cache, its own log) and stops it
afterwards; `Visitor` speaks to it as any page in any browser could: plain HTTP with the Host header it
likes (a DNS-rebinding page sends its own name), Streamlit's websocket (sessions, widget values) and the
upload endpoint.
"""
from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from streamlit.proto.BackMsg_pb2 import BackMsg
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg
from websockets.sync.client import connect

ROOT = Path(__file__).resolve().parents[1]
SERVER_START_S = 60
REPLY_TIMEOUT_S = 60
XSRF_COOKIE = "_streamlit_xsrf"


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (server and any children), SIGKILL if it lingers."""
    for sig, wait_s in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            pass


@dataclass
class Server:
    """A running dashboard: where it listens, its cache folder and its log."""

    address: str
    port: int
    cache: Path
    log: Path

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def log_tail(self, n_chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n_chars:] if self.log.exists() else "(no log)"


@contextlib.contextmanager
def served(script: str, tmp: Path, data: Path, *, address: str = "127.0.0.1", viewer: bool = False,
           flags: tuple[str, ...] = (), env: dict | None = None):
    """`streamlit run <script>` on a free port of `address`, as `make run` (or `make share` when `viewer`)."""
    cache, log = tmp / "cache", tmp / "streamlit.log"
    port = free_port(address)
    environ = {**os.environ, "TRANSFERSCOPE_CACHE_DIR": str(cache), "TRANSFERSCOPE_DATA": str(data), **(env or {})}
    environ.pop("TRANSFERSCOPE_VIEWER", None)
    if viewer:
        environ["TRANSFERSCOPE_VIEWER"] = "1"
    command = [str(Path(sys.executable).with_name("streamlit")), "run", script, "--server.headless", "true",
               "--server.port", str(port), "--server.address", address, "--browser.gatherUsageStats", "false",
               "--server.fileWatcherType", "none", *flags]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    server = Server(address, port, cache, log)
    try:
        deadline = time.monotonic() + SERVER_START_S
        while not healthy(server.url):
            if process.poll() is not None:
                pytest.fail(f"streamlit exited with code {process.returncode}:\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"{server.url}/_stcore/health did not answer within {SERVER_START_S} s:\n"
                            f"{server.log_tail()}")
            time.sleep(0.5)
        yield server
    finally:
        stop(process)


class Visitor:
    """One browser's view of `server`: it connects to the server's address but names `host` in its requests."""

    def __init__(self, server: Server, host: str | None = None):
        self.server = server
        self.host = host or server.address
        self.cookies: dict[str, str] = {}

    @property
    def netloc(self) -> str:
        return f"{self.host}:{self.server.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """One HTTP request; returns (status, {lower-case header: value}, body). Keeps the cookies it is given."""
        connection = http.client.HTTPConnection(self.server.address, self.server.port, timeout=REPLY_TIMEOUT_S)
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        try:
            connection.request(method, path, body=body, headers={"Host": self.netloc, **({"Cookie": cookie}
                                                                                           if cookie else {}),
                                                                 **(headers or {})})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        for value in response.headers.get_all("set-cookie") or []:
            name, _, rest = value.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return response.status, {k.lower(): v for k, v in response.getheaders()}, data

    @contextlib.contextmanager
    def stream(self, origin: str | None = None):
        """Streamlit's websocket as a page opens it, sending `origin` (default: the page's own, as the dashboard's
        frontend does; another site's page sends its own). Raises websockets' InvalidStatus when refused."""
        sock = socket.create_connection((self.server.address, self.server.port), timeout=REPLY_TIMEOUT_S)
        with connect(f"ws://{self.netloc}/_stcore/stream", sock=sock, subprotocols=["streamlit"],
                     origin=origin or f"http://{self.netloc}", open_timeout=REPLY_TIMEOUT_S) as websocket:
            yield websocket

    def rerun(self, websocket, page: str = "", widgets=()) -> list[ForwardMsg]:
        """Run `page` (the menu's file name; "" the home page) with these WidgetStates, as a click does."""
        message = BackMsg()
        message.rerun_script.query_string = ""
        message.rerun_script.page_name = page
        message.rerun_script.widget_states.widgets.extend(widgets)
        websocket.send(message.SerializeToString())
        return self._until_script_finished(websocket)

    @contextlib.contextmanager
    def session(self, origin: str | None = None):
        """Open a websocket session as the page does and run the script once; yields the session id."""
        with self.stream(origin) as websocket:
            yield self.rerun(websocket)[0].new_session.initialize.session_id

    def _until_script_finished(self, websocket) -> list[ForwardMsg]:
        """The server's messages up to the end of the script run; fails on an exception the page shows."""
        replies = []
        while not replies or replies[-1].WhichOneof("type") != "script_finished":
            replies.append(ForwardMsg.FromString(websocket.recv(timeout=REPLY_TIMEOUT_S)))
            element = replies[-1].delta.new_element
            if element.WhichOneof("type") == "exception":
                pytest.fail(f"the page shows {element.exception.type}: {element.exception.message}\n"
                            f"{self.server.log_tail()}")
        return replies

    def upload(self, session_id: str, data: bytes, name: str = "runs.zip", origin: str | None = None) -> int:
        """PUT a file to the upload endpoint of `session_id` (XSRF token included; Origin only when given, as a
        page of another site sends it); the HTTP status."""
        if XSRF_COOKIE not in self.cookies:
            self.request("GET", "/_stcore/health")
        boundary = uuid.uuid4().hex
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\n"
                f"Content-Type: application/zip\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
        status, _, _ = self.request("PUT", f"/_stcore/upload_file/{session_id}/{uuid.uuid4().hex}", body, {
            "Content-Type": f"multipart/form-data; boundary={boundary}", "X-Xsrftoken": self.cookies[XSRF_COOKIE],
            **({"Origin": origin} if origin else {})})
        return status
