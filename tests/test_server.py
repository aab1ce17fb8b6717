"""The real server, started as `make run` and `make share` start it: the Host names it answers, framing, uploads.

A `Visitor` (tests/live.py) is any page in any browser: it sends what Streamlit's own frontend sends,
with the Host header it likes. A DNS-rebinding page reaches the server's address under its own name.
"""
from __future__ import annotations

import re
import shlex
import socket

import pytest
from websockets.exceptions import InvalidStatus

from core.sharing import LOOPBACK_HOSTS, _route_address
from live import ROOT, Visitor, served

pytestmark = pytest.mark.slow
REBINDING_HOST = "attacker.example"
PLACED_FLAGS = ("--server.address", "--server.port")  # the tests choose where the server listens


def make_recipe(target: str) -> tuple[str, tuple[str, ...]]:
    """The script and flags the Makefile's `target` passes to `streamlit run` (without address and port)."""
    makefile = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    recipe = re.search(rf"^{target}:.*?\n((?:\t.*\n)+)", makefile, re.MULTILINE).group(1)
    command = next(line for line in recipe.splitlines() if "streamlit run" in line)
    words = shlex.split(command.split("streamlit run", 1)[1])
    script, flags = words[0], []
    for name, value in zip(words[1::2], words[2::2]):
        if name not in PLACED_FLAGS:
            flags += [name, value]
    return script, tuple(flags)


def network_address() -> str:
    """This machine's address on its network (what classmates connect to under `make share`)."""
    address = _route_address(socket.AF_INET, "192.0.2.1")
    if address is None or address.startswith("127."):
        pytest.fail("this machine has no network address besides loopback, so `make share` cannot be checked")
    return address


@pytest.fixture(scope="module")
def local_server(tmp_path_factory, demo_dir):
    """The dashboard as `make run` serves it: on 127.0.0.1, for the owner alone."""
    script, flags = make_recipe("run")
    with served(script, tmp_path_factory.mktemp("run"), demo_dir, flags=flags) as server:
        yield server


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, demo_dir):
    """The dashboard as `make share` serves it, listening on this machine's network address."""
    script, flags = make_recipe("share")
    with served(script, tmp_path_factory.mktemp("share"), demo_dir, address=network_address(), viewer=True,
                flags=flags) as server:
        yield server


def assert_refused(visitor: Visitor) -> None:
    status, _, _ = visitor.request("GET", "/")
    assert status == 400, f"a page named {visitor.host!r} got HTTP {status}"
    with pytest.raises(InvalidStatus), visitor.session():
        pass


def assert_served(visitor: Visitor) -> None:
    status, _, body = visitor.request("GET", "/")
    assert status == 200 and b"<html" in body.lower()
    with visitor.session() as session_id:
        assert session_id


def test_make_run_answers_only_its_loopback_names(local_server):
    for host in LOOPBACK_HOSTS[:2]:
        assert_served(Visitor(local_server, host))
    assert_refused(Visitor(local_server, REBINDING_HOST))
    assert_refused(Visitor(local_server, socket.gethostname()))  # the machine's name is for `make share` only


def test_make_share_answers_the_machines_names_and_refuses_others(shared_server):
    assert_served(Visitor(shared_server))  # its network address, as a classmate types it
    status, _, _ = Visitor(shared_server, socket.gethostname()).request("GET", "/")
    assert status == 200
    assert_refused(Visitor(shared_server, REBINDING_HOST))


@pytest.mark.parametrize("path", ["/", "/results", "/_stcore/health"])
def test_no_other_site_may_frame_the_dashboard(local_server, path):
    status, headers, _ = Visitor(local_server).request("GET", path)
    assert status == 200
    assert headers.get("content-security-policy") == "frame-ancestors 'self'"
    assert headers.get("x-frame-options") == "SAMEORIGIN"


def test_viewers_uploads_never_reach_a_shared_server(shared_server):
    """The uploader is not drawn for viewers, yet the endpoint took any PUT to one's own session (6 x 40 MB
    raised memory by 240 MB until the session expired)."""
    viewer = Visitor(shared_server)
    with viewer.session() as session_id:
        for _ in range(3):
            assert viewer.upload(session_id, b"x" * 2 * 1024**2) == 403
