"""Label files: `file,label` lines (CSV, TSV or semicolon, sniffed; header optional) naming images in a folder.

Paths are relative to the folder the labels describe (Windows `\\` separators and missing extensions are
accepted). Images listed but missing, images present but unlisted, paths outside the folder and images
listed twice with different labels are reported as skipped, each with its reason.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path, PurePosixPath

from core.errors import DataError
from core.scan import IMAGE_EXTENSIONS, FileIndex

PATH_COLUMNS = ("file", "filename", "file_name", "path", "filepath", "image", "img", "image_path", "image_id",
                "id", "name", "fname")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "classname", "classid", "class_id", "category",
                 "target", "species", "y")
DELIMITERS = ",;\t"


def read_labels(label_file, folder: Path, scanner: FileIndex) -> list[tuple[Path, str]]:
    """`(image path, label)` for every image `label_file` lists under `folder` that exists, in file order.

    The label file's bytes are hashed into `scanner`'s fingerprint; what cannot be used is skipped there.
    """
    label_file = Path(label_file).expanduser()
    text = _read_text(label_file)
    scanner.hasher.update(b"labels:" + hashlib.sha256(text.encode()).digest())
    rows = _rows(text, label_file)
    path_col, label_col, rows = _columns(rows, folder, label_file)
    listed: dict[Path, str] = {}
    for row in rows:
        path = _resolve(row[path_col], folder)
        if path is None:
            scanner.skip(folder / row[path_col], f"path in {label_file.name} lies outside {folder.name}/ (absolute "
                                                 "or with ..); give paths relative to that folder")
        elif listed.setdefault(path, row[label_col]) != row[label_col]:
            scanner.skip(path, f"listed twice in {label_file.name} with different labels "
                               f"({listed[path]!r}, {row[label_col]!r})")
            listed[path] = ""  # neither label is trusted
    return _present(listed, folder, label_file, scanner)


def _read_text(label_file: Path) -> str:
    try:
        return label_file.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"label file {str(label_file)!r} not found; give the path of a file,label text file") from None
    except IsADirectoryError:
        raise DataError(f"label file {str(label_file)!r} is a folder; give the path of a file,label text file") \
            from None
    except OSError as err:
        raise DataError(f"label file {str(label_file)!r} cannot be read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise DataError(f"label file {str(label_file)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                        "save it as UTF-8") from None


def _rows(text: str, label_file: Path) -> list[list[str]]:
    """Non-empty rows, cells stripped, in the sniffed dialect (comma when sniffing cannot tell)."""
    try:
        dialect = csv.Sniffer().sniff(text[:65536], delimiters=DELIMITERS)
    except csv.Error:
        dialect = csv.excel
    rows = [[cell.strip() for cell in row] for row in csv.reader(text.splitlines(), dialect)]
    rows = [row for row in rows if any(row)]
    if not rows:
        raise DataError(f"label file {str(label_file)!r} is empty; write one `file,label` line per image")
    return rows


def _columns(rows: list[list[str]], folder: Path, label_file: Path) -> tuple[int, int, list[list[str]]]:
    """(path column, label column, data rows): from a header naming them, else the first two of two columns."""
    first = [cell.lower() for cell in rows[0]]
    path_col = next((first.index(name) for name in PATH_COLUMNS if name in first), None)
    label_col = next((first.index(name) for name in LABEL_COLUMNS if name in first), None)
    header = _resolve(rows[0][0], folder) is None or not _exists(_resolve(rows[0][0], folder))
    if header and path_col is not None and label_col is not None:
        return path_col, label_col, _complete(rows[1:], path_col, label_col, label_file)
    widths = {len(row) for row in rows}
    if widths != {2}:
        raise DataError(f"label file {str(label_file)!r} has {max(widths)} columns; give two (file, label) or a "
                        f"header naming them, e.g. file,label (file columns: {', '.join(PATH_COLUMNS[:4])}; "
                        f"label columns: {', '.join(LABEL_COLUMNS[:3])})")
    starts_with_header = header and csv.Sniffer().has_header("\n".join(",".join(row) for row in rows[:20]))
    return 0, 1, _complete(rows[1:] if starts_with_header else rows, 0, 1, label_file)


def _complete(rows: list[list[str]], path_col: int, label_col: int, label_file: Path) -> list[list[str]]:
    """The rows that have a path and a label; a file listing no image at all is an error."""
    rows = [row for row in rows if len(row) > max(path_col, label_col) and row[path_col] and row[label_col]]
    if not rows:
        raise DataError(f"label file {str(label_file)!r} lists no images; write one `file,label` line per image")
    return rows


def _resolve(cell: str, folder: Path) -> Path | None:
    """`folder / cell` (with `\\` read as `/`), or None for a path that leaves the folder."""
    relative = PurePosixPath(cell.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return None
    return folder.joinpath(*relative.parts)


def _exists(path: Path) -> Path | None:
    """`path` if it is a file, else the one image file of that name with an image extension added."""
    if path.is_file():
        return path
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return next((with_ext for ext in IMAGE_EXTENSIONS if (with_ext := path.with_name(path.name + ext)).is_file()),
                    None)
    return None


def _present(listed: dict[Path, str], folder: Path, label_file: Path, scanner: FileIndex) -> list[tuple[Path, str]]:
    """The listed images that exist; missing ones, and images in `folder` not listed, are skipped."""
    found = []
    for path, label in listed.items():
        actual = _exists(path)
        if actual is None:
            scanner.skip(path, f"listed in {label_file.name} but missing")
        elif label:
            found.append((actual, label))
    if listed and not any(_exists(path) for path in listed):
        raise DataError(f"none of the {len(listed)} images listed in {str(label_file)!r} exist under "
                        f"{str(folder)!r}; paths in a label file are relative to that folder")
    used = {path for path, _ in found} | {_exists(path) for path in listed}
    for path in scanner.files(folder):
        if path.suffix.lower() in IMAGE_EXTENSIONS and path not in used:
            scanner.skip(path, f"not listed in {label_file.name}")
    return found
