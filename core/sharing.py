"""Read-only sharing: viewer mode for classmates, unlocked for the owner by a token typed on the server machine."""
from __future__ import annotations

import collections
import hmac
import html
import io
import ipaddress
import os
import re
import secrets
import socket
import stat
import threading
import time
import zipfile
from pathlib import Path, PurePath, PurePosixPath
from urllib.parse import urlencode, urlsplit, urlunsplit

from core.errors import ConfigError
from core.records import RunRecord

TOKEN_FILE = "owner_token"
HOSTS_ENV = "TRANSFERSCOPE_HOSTS"  # extra names a shared dashboard answers to, comma-separated (a DNS alias)
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")  # Host header forms: an IPv6 address in brackets
ROUTE_PROBES = ((socket.AF_INET, "192.0.2.1"), (socket.AF_INET6, "2001:db8::1"))  # documentation addresses
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")  # what viewers on the network may send over plain HTTP
LOOPBACK_ONLY_PATHS = ("/_stcore/metrics",)  # server internals (sessions, caches): for the server machine only
DEFAULT_PORTS = {"http": 80, "https": 443}
VIEWER_SESSIONS_PER_ADDRESS = 4  # open websocket sessions (browser tabs) of one viewer address at once
VIEWER_MESSAGES_PER_ADDRESS = {"max_events": 10, "per_s": 10}  # reruns (widget changes) of one viewer address
OTHER_FOLDER = "other-folder"  # how viewers see a dataset folder outside the served one
HIDDEN_PATH = "(a path on the server)"  # how viewers see any other path in a message
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~])~?/[^\s'\",;()\[\]{}]*[^\s'\",;()\[\]{}.]")  # in running text
# No other site may show the dashboard in a frame (clickjacking); its own pages still may.
FRAME_HEADERS = {"Content-Security-Policy": "frame-ancestors 'self'", "X-Frame-Options": "SAMEORIGIN"}


def viewer_mode(environ=os.environ) -> bool:
    """True when the server was started for sharing (`make share`, TRANSFERSCOPE_VIEWER=1)."""
    return environ.get("TRANSFERSCOPE_VIEWER", "").strip().lower() in ("1", "true", "yes")


def owner_token(cache_dir, fresh: bool = False) -> str:
    """The owner's unlock token under `cache_dir` (mode 0600): a new one when `fresh` or when none exists.

    `make share` asks for a fresh one at every start. A token file that other users could read (or that
    another user owns) is refused: whoever read it could unlock the dashboard.
    """
    path = Path(cache_dir) / TOKEN_FILE
    if fresh or not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{TOKEN_FILE}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(16))
        os.replace(tmp, path)
    info = os.lstat(path)
    if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise ConfigError(f"owner token file {str(path)!r} (mode {stat.S_IMODE(info.st_mode):o}) is not a private "
                          "file of yours, so others may have read the token; run `make share` again or "
                          "`python -m core owner-token --new` to issue a fresh private one")
    return path.read_text().strip()


def is_owner(candidate: str | None, cache_dir) -> bool:
    """Constant-time check of a token typed by a visitor (any text, non-ASCII included)."""
    if not candidate:
        return False
    return hmac.compare_digest(candidate.strip().encode("utf-8"), owner_token(cache_dir).encode("utf-8"))


def is_loopback(ip: str | None) -> bool:
    """Whether a client address is this machine (None: Streamlit reports no address for loopback clients).

    >>> is_loopback("127.0.0.1"), is_loopback(None), is_loopback("192.168.1.20")
    (True, True, False)
    """
    if ip is None:
        return True
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def allowed_hosts(share: bool, environ=os.environ, listen: tuple[str, ...] = ()) -> list[str]:
    """The Host header names the server answers to; any other (a DNS-rebinding page) is refused.

    This machine's loopback names; under `make share` also the `listen` names (the address the server listens
    on unless it is all of them, the name it gives browsers), its own names and network addresses, and the
    names listed in env TRANSFERSCOPE_HOSTS.

    >>> allowed_hosts(share=False)
    ['localhost', '127.0.0.1', '[::1]']
    """
    hosts = list(LOOPBACK_HOSTS)
    if share:
        hosts += [_host_form(name.lower()) for name in listen if name and name not in ("0.0.0.0", "::")]
        hosts += machine_names()
        hosts += [name.strip().lower() for name in environ.get(HOSTS_ENV, "").split(",") if name.strip()]
    return list(dict.fromkeys(hosts))


def _host_form(address: str) -> str:
    """An address as a Host header names it (IPv6 in brackets)."""
    return f"[{address.split('%')[0]}]" if ":" in address and not address.startswith("[") else address


def machine_names() -> list[str]:
    """This machine's host names (plain, fully qualified, mDNS `.local`) and addresses, as Host headers."""
    name = socket.gethostname().lower()
    names = [name, socket.getfqdn().lower(), f"{name.split('.')[0]}.local"]
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(name, None)}
    except OSError:
        addresses = set()
    addresses |= {address for family, probe in ROUTE_PROBES if (address := _route_address(family, probe))}
    return names + [_host_form(a) for a in sorted(addresses)]


def _route_address(family, probe: str) -> str | None:
    """The local address this machine would send from to `probe` (no packet is sent), None without a route."""
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((probe, 9))
            return sock.getsockname()[0]
    except OSError:
        return None


def may_send(method: str, client_ip: str | None) -> bool:
    """Whether an HTTP request may reach a shared server: reads from anyone, writes (uploads) from this machine.

    >>> may_send("GET", "192.168.1.20"), may_send("PUT", "192.168.1.20"), may_send("PUT", "127.0.0.1")
    (True, False, True)
    """
    return method.upper() in SAFE_METHODS or is_loopback(client_ip)


def same_origin(origin: str | None, scheme: str, host: str | None) -> bool:
    """Whether a request's Origin header is absent or exactly the server's own origin (scheme, host and port).

    `scheme` is the request's (`ws`/`wss` count as `http`/`https`), `host` its Host header. A page served from
    another port of the same machine (a notebook, `python -m http.server`) is another origin.

    >>> same_origin(None, "ws", "127.0.0.1:8501"), same_origin("http://127.0.0.1:8501", "ws", "127.0.0.1:8501")
    (True, True)
    >>> same_origin("http://127.0.0.1:9999", "ws", "127.0.0.1:8501"), same_origin("null", "http", "localhost")
    (False, False)
    """
    if origin is None:
        return True
    own = _origin_parts(f"{scheme.lower().replace('ws', 'http', 1)}://{host or ''}")
    return own is not None and _origin_parts(origin) == own


def _origin_parts(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an origin (default port filled in), None for anything that is not one."""
    parts = urlsplit(url.strip())
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number
        return None
    if parts.scheme.lower() not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query:
        return None
    return parts.scheme.lower(), parts.hostname.lower(), port


class Throttle:
    """At most `max_events` per `per_s` seconds, shared by every thread (e.g. all viewers of a server)."""

    def __init__(self, max_events: int, per_s: float):
        self.max_events, self.per_s = max_events, per_s
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def wait_s(self, now: float | None = None, count: bool = True) -> float:
        """0 (counting one event unless `count` is False) when one is allowed now; else the seconds until one is."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] >= self.per_s:
                self._times.popleft()
            if len(self._times) < self.max_events:
                if count:
                    self._times.append(now)
                return 0.0
            return self.per_s - (now - self._times[0])


def admit(*throttles: Throttle) -> float:
    """0 when every throttle allows an event now (then it counts in each); else the longest wait, counting none.

    E.g. a viewer's refit against its session's throttle and the one all viewers share.
    """
    wait_s = max(throttle.wait_s(count=False) for throttle in throttles)
    if wait_s == 0:
        for throttle in throttles:
            throttle.wait_s()
    return wait_s


class PrioritySlot:
    """One slot (the server's refit slot) that the owner gets first: waiting owners go before waiting viewers.

    So however many viewers queue, an owner waits at most for the one holding the slot.
    """

    def __init__(self):
        self._changed = threading.Condition()
        self._busy = False
        self._waiting = {True: 0, False: 0}  # owner? -> how many wait

    def acquire(self, owner: bool, timeout_s: float) -> bool:
        """Take the slot within `timeout_s` (True), else give up (False)."""
        with self._changed:
            self._waiting[owner] += 1
            try:
                taken = self._changed.wait_for(lambda: not self._busy and (owner or not self._waiting[True]),
                                               timeout_s)
            finally:
                self._waiting[owner] -= 1
            if taken:
                self._busy = True
            else:
                self._changed.notify_all()  # a viewer may have waited for this owner only
            return taken

    def release(self) -> None:
        with self._changed:
            self._busy = False
            self._changed.notify_all()

    def waiting(self) -> tuple[int, int]:
        """(owners, viewers) waiting for the slot now."""
        with self._changed:
            return self._waiting[True], self._waiting[False]


def is_within(path, root) -> bool:
    """True when `path`, symlinks resolved, lies inside the folder `root`: what viewers may read.

    >>> is_within("data/train/cat/1.png", "data"), is_within("data/../etc/passwd", "data")
    (True, False)
    """
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


class PathNames:
    """How viewers see paths: relative to the served dataset, led by its folder name; the cache by its name.

    Nothing else of the server's disk: other paths become OTHER_FOLDER (dataset folders) or HIDDEN_PATH.

    >>> names = PathNames("/home/me/data/digits", "/home/me/cache")
    >>> names.name("/home/me/data/digits/test/3/a.png"), names.text("no features under /home/me/cache/f/x1.")
    ('digits/test/3/a.png', 'no features under cache/f/x1.')
    """

    def __init__(self, served_root, cache_dir):
        self.roots = [(Path(served_root).expanduser().resolve(), Path(served_root).resolve().name or "dataset"),
                      (Path(cache_dir).expanduser().resolve(), "cache")]

    def name(self, path, hidden: str = HIDDEN_PATH) -> str:
        """`path` relative to the served dataset (or the cache), else `hidden`; symlinks resolved."""
        for root, label in self.roots:
            try:
                return str(PurePosixPath(label, Path(path).expanduser().resolve().relative_to(root)))
            except (ValueError, OSError, RuntimeError):
                continue
        return hidden

    def text(self, text: str) -> str:
        """`text` (a message) with every absolute path in it named as `name` does."""
        return _ABSOLUTE_PATH.sub(lambda match: self.name(match.group()), str(text))

    def record(self, record: RunRecord) -> RunRecord:
        """A copy of a run record for viewers: its dataset folder named, every path in its texts renamed."""
        shown = _map_strings(record.to_json(), self.text)
        shown["dataset"]["root"] = self.name(record.dataset.root, OTHER_FOLDER)
        return RunRecord.from_json(shown)

    def bundle_run(self, record: RunRecord, predictions):
        """A run as a viewer's bundle holds it: `record` and its predictions table with image paths renamed.

        Paths become `<dataset name>/<path inside the dataset>`, so the bundle still imports elsewhere.
        """
        shown = self.record(record)
        if predictions is None:
            return shown, None
        root, shown_root = PurePath(record.dataset.root), PurePosixPath(shown.dataset.root)
        inside = [PurePath(path) for path in predictions["path"]]
        paths = [shown_root / (path.relative_to(root) if path.is_relative_to(root) else path.name) for path in inside]
        return shown, predictions.assign(path=[str(path) for path in paths])


def refusal_file(message: str, fmt: str) -> bytes:
    """A download in format `fmt` (html, md or zip) that holds only `message`: what a refused download gives.

    >>> refusal_file("Not now.", "md")
    b'# TransferScope\\n\\nNot now.\\n'
    """
    if fmt == "html":
        return f"<!doctype html><title>TransferScope</title><p>{html.escape(message)}</p>\n".encode()
    if fmt == "zip":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            zf.writestr("NOT-BUILT.txt", message + "\n")
        return buffer.getvalue()
    return f"# TransferScope\n\n{message}\n".encode()


def _map_strings(value, rename):
    """`value` (JSON-like) with `rename` applied to every string in it."""
    if isinstance(value, str):
        return rename(value)
    if isinstance(value, dict):
        return {key: _map_strings(item, rename) for key, item in value.items()}
    if isinstance(value, list):
        return [_map_strings(item, rename) for item in value]
    return value


def app_base_url(page_url: str | None, page_names) -> str:
    """The dashboard's root URL from the URL of one of its pages (`""` when unknown).

    >>> app_base_url("http://host:8501/share", ["dataset", "share"])
    'http://host:8501'
    """
    parts = urlsplit(page_url or "")
    path = parts.path.rstrip("/")
    head, _, last = path.rpartition("/")
    if last in page_names:
        path = head
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


def run_link(run_id: str, base_url: str = "") -> str:
    """The deep link that opens run `run_id` on the Results page (relative when `base_url` is empty).

    >>> run_link("20260101-svm-none-ab12", "http://host:8501")
    'http://host:8501/results?run=20260101-svm-none-ab12'
    """
    path = f"results?{urlencode({'run': run_id})}"
    return f"{base_url.rstrip('/')}/{path}" if base_url else path
