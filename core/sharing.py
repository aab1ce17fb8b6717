"""Read-only sharing: viewer mode for classmates, unlocked for the owner by a token."""
from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

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
