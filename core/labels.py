"""Label files: `file,label` lines (CSV, TSV or semicolon, sniffed; header optional) naming images in a folder.

Each path is resolved once to the file it names, relative to the folder the labels describe: `\\` separators,
a missing or differently-cased image extension, and Unicode written composed or decomposed (NFC/NFD, as
macOS names files) all lead to the same file. Duplicates and conflicting labels are then found on the
resolved files. Images listed but missing, images present but unlisted, paths outside the folder, rows
without a label, names that fit several files and images listed twice with different labels are reported
as skipped, each with its reason.
"""
from __future__ import annotations

import csv
import hashlib
import io
import unicodedata
from collections import Counter
from pathlib import Path, PurePosixPath

from core.errors import DataError
from core.scan import IMAGE_EXTENSIONS, FileIndex, class_name_problem, few

PATH_COLUMNS = ("file", "filename", "file_name", "path", "filepath", "image", "img", "image_path", "image_id",
                "id", "name", "fname")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "classname", "classid", "class_id", "category",
                 "target", "species", "y")
DELIMITERS = ",;\t"
OUTSIDE = "lies outside {folder}/ (absolute or with ..); give paths relative to that folder"


def nfc(text: str) -> str:
    """`text` in Unicode's composed form (NFC): `é` typed as one character or as `e` + accent compare equal."""
    return unicodedata.normalize("NFC", text)


class FolderFiles:
    """The files under a folder, found by the names a label file may give them (see the module docstring)."""

    def __init__(self, folder: Path, files: list[Path]):
        self.folder, self.exact, self.stems = folder, {}, {}
        for path in files:
            key = _key(path.relative_to(folder).as_posix())
            self.exact.setdefault(key, path)
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                self.stems.setdefault(key[: -len(path.suffix)], []).append(path)

    def find(self, cell: str) -> tuple[Path | None, str | None]:
        """(the file `cell` names, None) or (None, why it names none)."""
        relative = PurePosixPath(cell.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts or not relative.parts:
            return None, OUTSIDE.format(folder=self.folder.name)
        key = _key(relative.as_posix())
        if key in self.exact:
            return self.exact[key], None
        matches = self.stems.get(key, [])
        if len(matches) > 1:
            return None, f"names {len(matches)} files ({few(p.name for p in matches)}); give the extension"
        return (matches[0], None) if matches else (None, "missing")


def _key(relative: str) -> str:
    """How a relative path is looked up: NFC, `./` dropped, an image extension in lower case."""
    path = PurePosixPath(nfc(relative))
    suffix = path.suffix
    return path.with_suffix(suffix.lower()).as_posix() if suffix.lower() in IMAGE_EXTENSIONS else path.as_posix()


def read_labels(label_file, folder: Path, scanner: FileIndex) -> list[tuple[Path, str]]:
    """`(image path, label)` for every image `label_file` lists under `folder` that exists, in file order.

    The label file's bytes are hashed into `scanner`'s fingerprint; what cannot be used is skipped there.
    Labels are NFC text.
    """
    label_file = Path(label_file).expanduser()
    text = _read_text(label_file)
    scanner.hasher.update(b"labels:" + hashlib.sha256(text.encode()).digest())
    files = FolderFiles(folder, scanner.files(folder))
    rows = _rows(text, label_file)
    path_col, label_col, rows = _columns(rows, files, label_file)
    listed: dict[Path, str] = {}
    refused = Counter()
    for row in rows:
        path, why = files.find(row[path_col])
        label = nfc(row[label_col]) if len(row) > label_col else ""
        if path is None:
            refused[why] += 1
            scanner.skip(folder / row[path_col], f"listed in {label_file.name} but missing" if why == "missing"
                         else f"path in {label_file.name} {why}")
        elif not label or class_name_problem(label):
            scanner.skip(path, f"listed in {label_file.name} " + (
                f"with an unusable label: {class_name_problem(label)}" if label else
                "without a label (an empty label cell)"))
            listed.setdefault(path, "")
        elif listed.setdefault(path, label) != label:
            if listed[path]:
                scanner.skip(path, f"listed twice in {label_file.name} with different labels "
                                   f"({listed[path]!r}, {label!r})")
            listed[path] = ""  # neither label is trusted
    if not any(listed.values()):
        _none_usable(label_file, folder, len(rows), refused)
    for path in files.exact.values():
        if path.suffix.lower() in IMAGE_EXTENSIONS and path not in listed:
            scanner.skip(path, f"not listed in {label_file.name}")
    return [(path, label) for path, label in listed.items() if label]


def _none_usable(label_file: Path, folder: Path, n_rows: int, refused: Counter) -> None:
    """Raise the error for a label file none of whose rows names a usable image, saying why for each reason."""
    reasons = "; ".join(f"{n} × {why}" for why, n in refused.most_common(3))
    raise DataError(f"none of the {n_rows} images listed in {str(label_file)!r} can be used under {str(folder)!r}"
                    f"{': ' + reasons if reasons else ''}; paths in a label file are relative to that folder "
                    "and each row needs a label")


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
    rows = [[cell.strip() for cell in row] for row in csv.reader(io.StringIO(text, newline=""), dialect)]
    rows = [row for row in rows if any(row)]
    if not rows:
        raise DataError(f"label file {str(label_file)!r} is empty; write one `file,label` line per image")
    return rows


def _columns(rows: list[list[str]], files: FolderFiles, label_file: Path) -> tuple[int, int, list[list[str]]]:
    """(path column, label column, data rows): from a header naming them, else the first two of two columns."""
    first = [cell.lower() for cell in rows[0]]
    path_col = next((first.index(name) for name in PATH_COLUMNS if name in first), None)
    label_col = next((first.index(name) for name in LABEL_COLUMNS if name in first), None)
    header = files.find(rows[0][0])[0] is None
    if header and path_col is not None and label_col is not None:
        return path_col, label_col, _complete(rows[1:], path_col, label_file)
    widths = {len(row) for row in rows}
    if widths != {2}:
        raise DataError(f"label file {str(label_file)!r} has {max(widths)} columns; give two (file, label) or a "
                        f"header naming them, e.g. file,label (file columns: {', '.join(PATH_COLUMNS[:4])}; "
                        f"label columns: {', '.join(LABEL_COLUMNS[:3])})")
    starts_with_header = header and csv.Sniffer().has_header("\n".join(",".join(row) for row in rows[:20]))
    return 0, 1, _complete(rows[1:] if starts_with_header else rows, 0, label_file)


def _complete(rows: list[list[str]], path_col: int, label_file: Path) -> list[list[str]]:
    """The rows that name a file (a missing label is skipped later, with its reason); none at all is an error."""
    rows = [row for row in rows if len(row) > path_col and row[path_col]]
    if not rows:
        raise DataError(f"label file {str(label_file)!r} lists no images; write one `file,label` line per image")
    return rows
