"""Scan image files: list class folders, validate images, and remember what was read in a file index.

Hidden folders (`.git/`, `.ipynb_checkpoints/`), macOS zip metadata (`__MACOSX/`) and names that are
not valid UTF-8 are never read as images; they are listed as skipped with the reason.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from core.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MACOS_METADATA = "__MACOSX"
NOT_UTF8 = "name is not valid UTF-8 text (an old camera or zip tool wrote it); rename it to read it"
MAX_CLASS_NAME = 100  # characters of a class name (a folder's or a label file's)
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclass(frozen=True)
class Sample:
    """One validated image: where it is, its label index and its size (width, height)."""

    path: str
    label: int
    size: tuple[int, int]


def printable(path) -> str:
    """`path` as text that can be shown and stored (bytes that are not UTF-8 become U+FFFD)."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def few(names, limit: int = 5, max_chars: int = 80) -> str:
    """Up to `limit` of `names` (each cut to `max_chars`), and how many more: what an error message lists.

    >>> few(["a", "b", "c"], limit=2)
    "'a', 'b' and 1 more"
    """
    names = list(names)
    shown = ", ".join(repr(printable(name)[:max_chars]) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.fsdecode turned undecodable bytes into lone surrogates
        return False
    return True


def class_name_problem(name: str) -> str | None:
    """Why `name` cannot be a class name (None: it can): control characters (a newline would start a line of
    Markdown wherever the name is shown) or more than MAX_CLASS_NAME characters."""
    if CONTROL_CHARACTERS.search(name):
        return f"class name {printable(name)[:MAX_CLASS_NAME]!r} holds control characters (a newline, a tab); rename it"
    if len(name) > MAX_CLASS_NAME:
        return f"class name {printable(name)[:40]!r}... is longer than {MAX_CLASS_NAME} characters; shorten it"
    return None


def folder_skip_reason(folder: Path) -> str | None:
    """Why the files under `folder` are not images of a class (None: read them)."""
    if not is_utf8(folder.name):
        return f"folder {NOT_UTF8}"
    if folder.name == MACOS_METADATA:
        return "macOS zip metadata (__MACOSX), not a class"
    if folder.name.startswith("."):
        return "hidden folder, not images of a class"
    return None


class FileIndex:
    """Scans image files, remembering each file's content hash and image size by its `stat` stamp.

    The stamp is (size, mtime, ctime, inode): tools that rewrite a file but keep its size and mtime
    (EXIF orientation editors) still change its ctime, and saving through a new file changes the inode.
    The dataset fingerprint hashes every file's label, name and content hash, whether read or remembered.
    """

    VERSION = 2  # 2: ctime and inode in the stamp

    def __init__(self, root: Path, cache_dir=None, rescan: bool = False):
        self.hasher, self.skipped = hashlib.sha256(), []
        name = f"{hashlib.sha256(os.fsencode(root.resolve())).hexdigest()[:16]}.json"
        self.path = Path(cache_dir) / "index" / name if cache_dir is not None else None
        self.known = {} if rescan or self.path is None else self._read()
        self.seen: dict[str, list] = {}
        self.excluded: set[Path] = set()  # resolved folders read on their own (a test folder inside the training one)

    def _read(self) -> dict:
        try:
            saved = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}  # no index yet, or an unreadable one: scan everything
        return saved.get("files", {}) if isinstance(saved, dict) and saved.get("version") == self.VERSION else {}

    def save(self) -> None:
        """Write the index of the files seen in this scan (atomically); a no-op without a cache folder."""
        if self.path is not None and self.seen != self.known:
            from core.storage import atomic_write_json

            atomic_write_json(self.path, {"version": self.VERSION, "files": self.seen}, "file index")

    def exclude(self, folder: Path) -> None:
        """Leave `folder` out of the folders scanned from now on: it is read on its own (a test folder inside the
        training folder is no class, and its images are not training images)."""
        self.excluded.add(folder.resolve())

    def _excluded(self, folder: Path) -> bool:
        return bool(self.excluded) and folder.resolve() in self.excluded

    def same_files(self, train: list[Sample], test: list[Sample]) -> list[tuple[str, str, str]]:
        """(train path, test path, how) for each test image whose file is also a training image: the same file
        (a hard link, or the same path) or byte-identical content (compared by the content hashes of the scan)."""
        first = {}
        for sample in train:
            first.setdefault(self.seen[sample.path][1], sample.path)
        pairs = []
        for sample in test:
            other = first.get(self.seen[sample.path][1])
            if other is not None:
                try:
                    same = os.path.samefile(other, sample.path)
                except OSError:
                    same = False
                pairs.append((other, sample.path, "the same file (a hard link)" if same else "byte-identical"))
        return pairs

    def skip(self, path, reason: str) -> None:
        self.skipped.append((printable(path), reason))

    def class_names(self, folder: Path) -> list[str]:
        """The class sub-folders of `folder`, sorted; hidden, `__MACOSX` and undecodable ones are skipped."""
        classes = []
        for sub in sorted(d for d in folder.iterdir() if d.is_dir() and not self._excluded(d)):
            reason = folder_skip_reason(sub) or class_name_problem(sub.name)
            if reason is None:
                classes.append(sub.name)
            else:
                self.skip_folder(sub, reason)
        return classes

    def files(self, folder: Path) -> list[Path]:
        """Files under `folder` in path order, not descending into folders that are skipped (listed)."""
        found = []
        for parent, folders, names in os.walk(folder):
            parent = Path(parent)
            for name in sorted(folders):
                reason = folder_skip_reason(parent / name)
                if self._excluded(parent / name):
                    folders.remove(name)
                elif reason is not None:
                    folders.remove(name)
                    self.skip_folder(parent / name, reason)
            for name in names:
                if not is_utf8(name):
                    self.skip(parent / name, f"file {NOT_UTF8}")
                elif not name.startswith("."):  # .DS_Store, ._resource-forks: clutter, not images
                    found.append(parent / name)
        return sorted(found)

    def skip_folder(self, folder: Path, reason: str) -> None:
        """List a skipped folder once, with how many files it holds (an empty one is not worth a line)."""
        n = sum(len(names) for _, _, names in os.walk(folder))
        if n:
            self.skip(folder, f"{reason}: its {n} file(s) are not read")

    def scan(self, folder: Path, classes: list[str]) -> list[Sample]:
        """Samples of `folder/<class>/**` in class then path order; unusable files go to `skipped`."""
        return self.add([(path, label) for label, name in enumerate(classes) if (folder / name).is_dir()
                         for path in self.files(folder / name)])

    def add(self, entries) -> list[Sample]:
        """Samples of the usable `(path, label)` entries, hashed into the fingerprint; the rest are skipped."""
        samples = []
        for path, label in entries:
            digest, size, reason = self._inspect(path)
            if reason:
                self.skip(path, reason)
                continue
            self.hasher.update(f"{label}:{path.name}:".encode())
            self.hasher.update(bytes.fromhex(digest))
            samples.append(Sample(str(path), label, size))
        return samples

    def _inspect(self, path: Path) -> tuple[str | None, tuple[int, int] | None, str | None]:
        """(content hash, image size, skip reason) from the index when the stamp matches, else read."""
        try:
            st = path.stat()
            stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        except OSError as err:
            return None, None, f"cannot read file: {err.strerror or err}"
        entry = self.known.get(str(path))
        if entry is None or entry[0] != stamp:
            digest, size, reason = inspect_image(path)
            entry = [stamp, digest, list(size) if size else None, reason]
        self.seen[str(path)] = entry
        return entry[1], tuple(entry[2]) if entry[2] else None, entry[3]


def inspect_image(path: Path) -> tuple[str | None, tuple[int, int] | None, str | None]:
    """Decode an image cheaply (JPEG draft mode) and hash its bytes; return (hash, size, skip reason)."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return None, None, f"not an image extension ({path.suffix or 'none'})"
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, None, f"cannot read file: {err.strerror or err}"
    if not data:
        return None, None, "empty file (0 bytes)"
    try:
        with Image.open(io.BytesIO(data)) as img:
            size = img.size
            if img.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientation turns it sideways when opened
                size = size[::-1]
            img.draft("RGB", (64, 64))
            img.load()
    except UnidentifiedImageError:
        return None, None, "not a recognised image format (corrupt, or not really an image)"
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        return None, None, f"unreadable image: {err}"
    return hashlib.sha256(data).hexdigest(), size, None


def check_class_count(folder: Path, classes: list[str]) -> list[str]:
    """`classes` if there are at least two, else a DataError explaining the expected layout."""
    if len(classes) < 2:
        raise DataError(
            f"{printable(folder)!r} has {len(classes)} class folder(s); put each class's images in its own "
            "sub-folder (at least two), e.g. DIR/cats/*.jpg and DIR/dogs/*.jpg, or DIR/train/<class> + DIR/test/<class>"
        )
    return classes
