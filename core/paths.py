"""Where TransferScope keeps its files: the cache folder (features, runs, maps, the demo data), declared once.

The CLI (`--cache-dir`'s default) and the dashboard both read the folder from env TRANSFERSCOPE_CACHE_DIR.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_DIR_ENV = "TRANSFERSCOPE_CACHE_DIR"
DEFAULT_CACHE_DIR = "cache"  # relative to the working folder
DEMO_DATASET = "datasets/digits-demo"  # the embedded demo's folder inside the cache


def cache_dir(environ=os.environ) -> Path:
    """The cache folder: env TRANSFERSCOPE_CACHE_DIR when set, else `cache`.

    >>> cache_dir({}), cache_dir({"TRANSFERSCOPE_CACHE_DIR": "/tmp/ts"})
    (PosixPath('cache'), PosixPath('/tmp/ts'))
    """
    return Path(environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


def demo_dir(environ=os.environ) -> Path:
    """The demo dataset's default folder: `datasets/digits-demo` inside the cache folder."""
    return cache_dir(environ) / DEMO_DATASET
