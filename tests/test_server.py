"""The real server, started as `make run` and `make share` start it: the Host and Origin it answers, framing,
uploads, metrics, limits per viewer.

A `Visitor` (tests/live.py) is any page in any browser: it sends what Streamlit's own frontend sends,
with the Host header and Origin it likes. A DNS-rebinding page reaches the server's address under its own name;
a page on another port of this machine sends its own origin.

Traffic stays on this machine's loopback, or goes to a classmate's test host that the test makes itself: a
network namespace linked to this one by a veth pair on a private /30 used nowhere else (as root, which CI is).
The shared server listens on the host side of that link; the classmate (tests/classmate.py) visits from inside.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys

import pytest
from websockets.exceptions import InvalidStatus

from core.sharing import LOOPBACK_HOSTS
from live import ROOT, Visitor, served

pytestmark = pytest.mark.slow
REBINDING_HOST = "attacker.example"
OTHER_PORT_PAGE = "http://127.0.0.1:9999"  # a notebook or `python -m http.server` page in the owner's browser
PLACED_FLAGS = ("--server.address", "--server.port", "--browser.serverAddress")  # the tests choose where it listens
LINK = ipaddress.ip_network("10.213.31.0/30")  # the classmate link: server .1 (this side), classmate .2
CLASSMATE_S = 240


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


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def need_root_and_ip() -> None:
    """A test host needs root and iproute2: say so, and fail under CI (never skip into green there)."""
    missing = "root" if os.geteuid() != 0 else "iproute2's `ip`" if shutil.which("ip") is None else None
    if missing:
        message = (f"the classmate's test host (a network namespace with a veth link) needs {missing}; run the "
                   "server tests as root (CI does) so `make share` is checked from another host")
        (pytest.fail if in_ci() else pytest.skip)(message)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def classmate_host():
    """A network namespace linked by a veth pair: yields (its name, this side's address); always removed."""
    need_root_and_ip()
    server_ip, classmate_ip = (str(address) for address in LINK.hosts())
    used = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=30).stdout
    if f" {server_ip}/" in used or f" {classmate_ip}/" in used:
        pytest.fail(f"{LINK} is already in use on this machine (a test host left behind?): `ip link del ts{os.getpid()}`")
    namespace, veth = f"ts-classmate-{os.getpid()}", f"tsh{os.getpid() % 10**8}"
    try:
        ip("netns", "add", namespace)
        ip("link", "add", veth, "type", "veth", "peer", "name", "classmate", "netns", namespace)
        ip("addr", "add", f"{server_ip}/{LINK.prefixlen}", "dev", veth)
        ip("link", "set", veth, "up")
        ip("-n", namespace, "addr", "add", f"{classmate_ip}/{LINK.prefixlen}", "dev", "classmate")
        ip("-n", namespace, "link", "set", "classmate", "up")
        yield namespace, server_ip
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True, timeout=30)  # gone with the namespace too
        subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def local_server(tmp_path_factory, demo_dir):
    """The dashboard as `make run` serves it: on 127.0.0.1, for the owner alone."""
    script, flags = make_recipe("run")
    with served(script, tmp_path_factory.mktemp("run"), demo_dir, flags=flags) as server:
        yield server


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory, demo_dir):
    """The dashboard as `make share` serves it, on the host side of a classmate's link: (server, namespace)."""
    script, flags = make_recipe("share")
    with classmate_host() as (namespace, address), \
            served(script, tmp_path_factory.mktemp("share"), demo_dir, address=address, viewer=True,
                   flags=(*flags, "--browser.serverAddress", address)) as server:
        yield server, namespace


@pytest.fixture(scope="module")
def classmate_visit(shared_server):
    """What a classmate got from the shared dashboard, visiting from the test host (tests/classmate.py)."""
    server, namespace = shared_server
    token = (server.cache / "owner_token").read_text().strip() if (server.cache / "owner_token").exists() else "x"
    done = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, str(ROOT / "tests" / "classmate.py"),
                           server.address, str(server.port), token],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=CLASSMATE_S)
    assert done.returncode == 0, f"the classmate's visit failed:\n{done.stderr[-3000:]}\n{server.log_tail()}"
    return json.loads(done.stdout.splitlines()[-1])


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


def test_a_classmate_on_another_host_sees_the_page_and_a_foreign_host_is_refused(classmate_visit):
    assert classmate_visit["page_status"] == 200 and classmate_visit["page_is_html"]
    assert classmate_visit["session"]
    assert classmate_visit["foreign_host_status"] == 400
    assert classmate_visit["foreign_host_websocket"] != "open"


def test_a_classmate_cannot_upload_read_metrics_or_unlock_owner_actions(classmate_visit):
    """Even with the right token: the owner unlocks on the server machine only."""
    assert classmate_visit["upload_status"] == 403
    assert classmate_visit["metrics_status"] == 403
    assert classmate_visit["unlocked"] is False


def test_make_share_answers_the_machines_name(shared_server):
    server, _ = shared_server
    status, _, _ = Visitor(server, socket.gethostname()).request("GET", "/")
    assert status == 200


@pytest.mark.parametrize("path", ["/", "/results", "/_stcore/health"])
def test_no_other_site_may_frame_the_dashboard(local_server, path):
    status, headers, _ = Visitor(local_server).request("GET", path)
    assert status == 200
    assert headers.get("content-security-policy") == "frame-ancestors 'self'"
    assert headers.get("x-frame-options") == "SAMEORIGIN"


def test_a_page_on_another_local_port_gets_no_websocket_and_no_upload(local_server):
    """Streamlit compared only host names: a page on 127.0.0.1:9999 in the owner's browser acted as the owner."""
    owner = Visitor(local_server)
    with pytest.raises(InvalidStatus) as refused, owner.session(origin=OTHER_PORT_PAGE):
        pass
    assert refused.value.response.status_code == 403
    with owner.session() as session_id:  # the dashboard's own page still works, and uploads from it
        assert owner.upload(session_id, b"x", origin=local_server.url) != 403
        assert owner.upload(session_id, b"x", origin=OTHER_PORT_PAGE) == 403
    assert "Exception" not in local_server.log_tail()


def test_server_metrics_stay_readable_on_the_server_machine(local_server):
    assert Visitor(local_server).request("GET", "/_stcore/metrics")[0] == 200


def test_a_viewer_address_holds_a_few_sessions(classmate_visit):
    """Each tab is a session that reruns pages; one address opening many would take the owner's server."""
    assert classmate_visit["extra_session"] == "429"
