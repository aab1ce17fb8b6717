"""Read-only sharing: viewer mode for classmates, unlocked for the owner by a token."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

TOKEN_FILE = "owner_token"


def viewer_mode(environ=os.environ) -> bool:
    """True when the server was started for sharing (`make share`, TRANSFERSCOPE_VIEWER=1)."""
    return environ.get("TRANSFERSCOPE_VIEWER", "").strip().lower() in ("1", "true", "yes")


def owner_token(cache_dir) -> str:
    """The owner's unlock token, created once (readable only by the owner) under `cache_dir`."""
    path = Path(cache_dir) / TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(16))
    return path.read_text().strip()


def is_owner(candidate: str | None, cache_dir) -> bool:
    """Constant-time check of a token typed by a visitor."""
    return bool(candidate) and hmac.compare_digest(candidate.strip(), owner_token(cache_dir))


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
