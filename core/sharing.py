"""Read-only sharing: viewer mode for classmates, unlocked for the owner by a token typed on the server machine."""
from __future__ import annotations

import collections
import hmac
import ipaddress
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from core.errors import ConfigError

TOKEN_FILE = "owner_token"


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


class Throttle:
    """At most `max_events` per `per_s` seconds, shared by every thread (e.g. all viewers of a server)."""

    def __init__(self, max_events: int, per_s: float):
        self.max_events, self.per_s = max_events, per_s
        self._times: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()

    def wait_s(self, now: float | None = None) -> float:
        """0 and count one event when one is allowed now; else the seconds until one will be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._times and now - self._times[0] >= self.per_s:
                self._times.popleft()
            if len(self._times) < self.max_events:
                self._times.append(now)
                return 0.0
            return self.per_s - (now - self._times[0])


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
