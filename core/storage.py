"""Files written whole or not at all, JSON read with errors that say what to do, output paths checked first.

The bottom of the engine: it imports nothing else from `core` but its errors, so any module may write
through it (feature caches, run folders, reports, results files) without loading the rest.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
from pathlib import Path

from core.errors import RunStoreError, StorageError


def fsync_file(path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def fsync_dir(path) -> None:
    """Flush a folder's entries (a rename into it), so the rename survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_WRITE_ERRORS = {
    errno.ENOSPC: "the disk is full; free some space or write to another disk",
    errno.EDQUOT: "the disk quota is used up; free some space or write to another disk",
    errno.EACCES: "permission denied; choose a location you can write to",
    errno.EPERM: "permission denied; choose a location you can write to",
    errno.EROFS: "the file system is read-only; choose a location you can write to",
    errno.EISDIR: "a folder is in the way; give a file path, not a folder",
    errno.ENOTDIR: "a file is in the way where a folder should be; choose another location",
    errno.EEXIST: "a file is in the way where a folder should be; choose another location",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def storage_error(err: OSError, path, what: str = "file") -> StorageError:
    """A StorageError naming `what` was written, where, what went wrong and what to do.

    >>> storage_error(OSError(errno.EISDIR, "Is a directory"), "out", "report")
    StorageError('could not write report out: a folder is in the way; give a file path, not a folder')
    """
    advice = _WRITE_ERRORS.get(err.errno, f"{err.strerror or err}; check the path, free disk space and permissions")
    return StorageError(f"could not write {what} {path}: {advice}")


@contextlib.contextmanager
def writing(path, what: str = "file"):
    """Turn an OSError raised inside the block into a StorageError naming `path` (the write boundary)."""
    try:
        yield
    except OSError as err:
        raise storage_error(err, path, what) from err


def check_output_file(path, what: str) -> Path:
    """`path` as a Path if a file can be written there, else a StorageError saying what is in the way."""
    path = _check_output_path(path, what)
    if path.is_dir():
        raise StorageError(f"{what} {path} is a folder; give a file path, e.g. {path / 'results.json'}")
    return path


def check_output_dir(path, what: str) -> Path:
    """`path` as a Path if it is, or can be made, a writable folder, else a StorageError saying why not."""
    path = _check_output_path(path, what)
    if path.exists() and not path.is_dir():
        raise StorageError(f"{what} {path} is a file, not a folder; give a folder path (it is created if missing)")
    return path


def _check_output_path(path, what: str) -> Path:
    """The path, once its nearest existing ancestor is known to be a folder this process may write in."""
    if not str(path).strip():
        raise StorageError(f"no {what} given (the path is empty)")
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists() or p == p.parent)
    if existing != path and not existing.is_dir():
        raise StorageError(f"{what} {path}: {existing} is a file, not a folder; choose another location")
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK):
        raise StorageError(f"{what} {path}: permission denied in {existing}; choose a location you can write to")
    return path


@contextlib.contextmanager
def atomic_file(path, what: str = "file"):
    """Yield a temporary path beside `path`; when the block succeeds, fsync it and move it onto `path`.

    Any OSError (a full disk, no permission, a folder in the way) becomes a StorageError naming `path`
    and `what` it is; the temporary file is removed, so nothing half-written is ever found at `path`.

    >>> with atomic_file("cache/x.npy", "feature array") as tmp:  # doctest: +SKIP
    ...     numpy.save(tmp, X)
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(8)}.tmp"  # the writer creates it (usual permissions)
    try:
        with writing(path, what):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp
            fsync_file(tmp)
            os.replace(tmp, path)
            fsync_dir(path.parent)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def atomic_write_bytes(path, data: bytes, what: str = "file") -> None:
    """Write `data` to `path` so readers see the old file or the new one, never a partial one."""
    with atomic_file(path, what) as tmp:
        tmp.write_bytes(data)


def atomic_write_npz(path, what: str, **arrays) -> None:
    """Write `arrays` to `path` as an uncompressed `.npz` atomically (`numpy.load` reads them back by name)."""
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue(), what)


def to_json_text(obj) -> str:
    """Indented JSON; numpy scalars and arrays become plain numbers and lists."""

    def plain(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"{type(value).__name__} is not JSON serializable; store plain numbers, strings and lists")

    return json.dumps(obj, indent=2, default=plain)


def atomic_write_json(path, obj, what: str = "file") -> None:
    """Write `obj` as indented JSON to `path` atomically."""
    atomic_write_bytes(path, to_json_text(obj).encode("utf-8"), what)


def read_json_object(path, what: str, error: type[Exception] = RunStoreError) -> dict:
    """Load a JSON object from `path`, raising `error` that names `what` the file is and what went wrong."""
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))  # editors on Windows start UTF-8 with a BOM
    except FileNotFoundError:
        raise error(f"{what} {str(path)!r} not found") from None
    except IsADirectoryError:
        raise error(f"{what} {str(path)!r} is a folder; give the path of the JSON file") from None
    except OSError as err:
        raise error(f"{what} {str(path)!r} cannot be read: {err.strerror or err}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise error(f"{what} {str(path)!r} is not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise error(f"{what} {str(path)!r} must hold a JSON object, got {type(obj).__name__}")
    return obj
