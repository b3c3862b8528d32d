"""Find a hospital's labelled images: one folder per class, or an APTOS-style CSV beside an image folder.

Either layout may hold PNG, JPEG, BMP, TIFF or DICOM files (``.dcm`` or extensionless with the DICOM
preamble). Opening a collection only lists files; decoding happens in validation and in the cache. Files
that cannot belong to the collection (non-images in class folders, images without a label, CSV rows with
no image) are kept as ``issues`` for the validation report instead of failing.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from core.data.images import IMAGE_SUFFIXES, is_image_file
from core.data.problems import Problem
from core.errors import DataError

DR_CLASSES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]

_JUNK_FILES = {"thumbs.db", "desktop.ini", "ehthumbs.db"}
_CSV_ID, _CSV_LABEL = "id_code", "diagnosis"
_CSV_MAX_BYTES = 64 * 1024 * 1024  # far above any real label list; refuses a hostile multi-GB "CSV"


@dataclass
class Sample:
    """One image: a file, or one frame of a multi-frame DICOM file (``frame``, 0-based)."""

    path: Path
    label: int | None
    frame: int | None = None
    """None for a single-image file; the frame's index in a multi-frame file."""
    laterality: str | None = None
    """"L" or "R" when the file says which eye (DICOM header, or a _left/_right file name); set by
    validation. Random left-right flips in training turn one into the other, so they are recorded."""

    @property
    def name(self) -> str:
        """The file name, with the frame number (1-based, as viewers count) for a frame of a series."""
        return self.path.name if self.frame is None else f"{self.path.name} [frame {self.frame + 1}]"


@dataclass
class HospitalDataset:
    root: Path
    classes: list[str]
    samples: list[Sample]
    layout: str  # "folders" | "csv"
    labels_csv: Path | None = None
    issues: list[Problem] = field(default_factory=list)
    """Files or CSV rows that cannot be used: non-image files, images with no label, rows with no image."""
    unused_files: list[Path] = field(default_factory=list)
    """Files found where images belong that are not samples (they appear in ``issues``)."""

    @property
    def labels(self) -> list[int]:
        return [int(sample.label) for sample in self.samples if sample.label is not None]


def open_dataset(path: Path, *, labels_csv: Path | None = None) -> HospitalDataset:
    """List the labelled images at ``path`` (a class-folder tree, a labels CSV, or a folder with one CSV)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist; choose the folder that holds the images.")
    if labels_csv is not None:
        labels_csv = Path(labels_csv)
        if not labels_csv.is_file():
            raise DataError(f"Labels CSV {labels_csv} does not exist; check the path.")
        if not path.is_dir():
            raise DataError(f"{path} is not a folder; with a labels CSV, choose the folder holding the images.")
        return _open_csv(labels_csv, root=path, image_dirs=[(path, True)], report_other_files=True)
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise DataError(f"{path} is a single file; choose a folder of images or a labels CSV (id_code,diagnosis).")
        return _open_csv_beside_images(path)

    label_csvs = [f for f in sorted(path.glob("*.csv")) if f.is_file() and _is_label_csv(f)]
    if len(label_csvs) > 1:
        names = ", ".join(f.name for f in label_csvs)
        raise DataError(f"{path} holds several label CSVs ({names}); choose one with --labels-csv.")
    if label_csvs:
        return _open_csv_beside_images(label_csvs[0])
    return _open_folders(path)


# --- one folder per class ---------------------------------------------------------------------------

def _open_folders(root: Path) -> HospitalDataset:
    class_dirs: list[tuple[Path, list[Path]]] = []
    for sub in _subfolders(root):
        files = list(_walk_files(sub))
        if any(is_image_file(f) for f in files):
            class_dirs.append((sub, files))
    if not class_dirs:
        raise DataError(
            f"No images found in {root}: expected one sub-folder per class (0-4 or class names) or an "
            "APTOS-style CSV (id_code,diagnosis) beside the images."
        )
    classes, index_of = _class_mapping([d.name for d, _ in class_dirs])
    samples: list[Sample] = []
    issues: list[Problem] = []
    unused: list[Path] = []
    for folder, files in class_dirs:
        label = index_of[folder.name]
        for file in files:
            if is_image_file(file):
                samples.append(Sample(file, label))
            else:
                unused.append(file)
                issues.append(Problem(str(file), "not_image",
                                      f"not an image file ({_suffix_text(file)}); it is ignored"))
    for file in _files_in(root):
        if is_image_file(file):
            unused.append(file)
            issues.append(Problem(str(file), "no_label",
                                  "image is not inside a class folder; move it into the folder of its class"))
    return HospitalDataset(root=root, classes=classes, samples=samples, layout="folders", issues=issues,
                           unused_files=unused)


def _grade(text: str) -> int | None:
    """The DR grade 0-4 that ``text`` is written as, else None. ASCII digits only: str.isdigit() also
    accepts "¹" or "٣", which int() refuses or reads as a grade nobody wrote."""
    if text.isascii() and text.isdigit() and int(text) < len(DR_CLASSES):
        return int(text)
    return None


def _class_mapping(names: list[str]) -> tuple[list[str], dict[str, int]]:
    """Folders 0..4 or the DR grade names map to the DR grades; any other names are classes in sorted order."""
    if all(_grade(n) is not None for n in names):
        return list(DR_CLASSES), {n: int(n) for n in names}
    by_lower = {c.lower(): i for i, c in enumerate(DR_CLASSES)}
    if all(n.lower() in by_lower for n in names):
        return list(DR_CLASSES), {n: by_lower[n.lower()] for n in names}
    classes = sorted(names)
    return classes, {n: i for i, n in enumerate(classes)}


# --- APTOS-style CSV --------------------------------------------------------------------------------

def _open_csv_beside_images(csv_path: Path) -> HospitalDataset:
    """The images live in the CSV's folder or in one of its sub-folders (e.g. train_images/)."""
    folder = csv_path.parent
    candidates = [(folder, False)] + [(sub, True) for sub in _subfolders(folder)]
    return _open_csv(csv_path, root=folder, image_dirs=candidates, report_other_files=False)


def _open_csv(csv_path: Path, *, root: Path, image_dirs: list[tuple[Path, bool]],
              report_other_files: bool) -> HospitalDataset:
    """``image_dirs``: (folder, recursive) candidates; the one matching the most id_codes is used."""
    rows, rejected, issues = _read_label_csv(csv_path)
    if not rows:
        raise DataError(f"{csv_path.name} lists no images with a valid diagnosis; fix the CSV.")

    best_score: tuple[int, int, int] = (-1, 0, 0)
    image_dir, files = root, []
    for order, (folder, recursive) in enumerate(image_dirs):
        listed = list(_walk_files(folder)) if recursive else list(_files_in(folder))
        lookup = _image_lookup([f for f in listed if is_image_file(f)])
        matches = sum(1 for id_code in rows if _find(lookup, id_code) is not None)
        # Ties go to "<csv stem>_images" (APTOS: train.csv + train_images/), then to the earlier candidate.
        preferred = 1 if folder.name.lower() == f"{csv_path.stem.lower()}_images" else 0
        score = (matches, preferred, -order)
        if score > best_score:
            best_score, image_dir, files = score, folder, listed
    matches = best_score[0]
    if matches == 0:
        raise DataError(
            f"None of the {len(rows)} id_codes in {csv_path.name} matches an image file in {image_dir} or its "
            "sub-folders; check that the images are beside the CSV."
        )

    lookup = _image_lookup([f for f in files if is_image_file(f)])
    used: set[Path] = set()
    unused: list[Path] = []
    samples: list[Sample] = []
    for id_code, (line, label) in rows.items():
        found = _find(lookup, id_code)
        if found is None:
            issues.append(Problem(id_code, "no_image_for_csv_row",
                                  f"{csv_path.name} line {line}: no image file named {id_code}.* found"))
            continue
        first, *others = found
        if first in used:  # e.g. rows "a" and "a.png" both name a.png
            issues.append(Problem(id_code, "no_label",
                                  f"{csv_path.name} line {line}: {first.name} is already labelled by another row"))
            continue
        samples.append(Sample(first, label))
        used.add(first)
        for other in others:
            used.add(other)
            unused.append(other)
            issues.append(Problem(str(other), "no_label",
                                  f"another file with id_code {id_code} ({first.name}) was used; remove one"))
    for id_code, reason in rejected.items():
        if _find(lookup, id_code) is None:
            issues.append(Problem(id_code, "no_label", reason))
    for file in files:
        if file in used or file == csv_path:
            continue
        if is_image_file(file):
            unused.append(file)
            reason = rejected.get(file.stem) or rejected.get(file.name) or f"image is not listed in {csv_path.name}"
            issues.append(Problem(str(file), "no_label", reason))
        elif (report_other_files or file.parent != csv_path.parent) and file.suffix.lower() != ".csv":
            unused.append(file)
            issues.append(Problem(str(file), "not_image", f"not an image file ({_suffix_text(file)}); it is ignored"))
    samples.sort(key=lambda s: str(s.path))
    return HospitalDataset(root=root, classes=list(DR_CLASSES), samples=samples, layout="csv",
                           labels_csv=csv_path, issues=issues, unused_files=unused)


def _is_label_csv(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader([handle.readline()]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    names = [h.strip().lower() for h in header]
    return _CSV_ID in names and _CSV_LABEL in names


def _read_label_csv(path: Path) -> tuple[dict[str, tuple[int, int]], dict[str, str], list[Problem]]:
    """({id_code: (line, grade)} of valid rows, {id_code: reason} of invalid or conflicting rows, problems)."""
    try:
        if path.stat().st_size > _CSV_MAX_BYTES:
            raise DataError(f"{path.name} is larger than {_CSV_MAX_BYTES // 2**20} MiB; is it really a labels CSV?")
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path.name} is not UTF-8 text; save the CSV as UTF-8.") from exc
    except OSError as exc:
        raise DataError(f"{path.name} cannot be read ({exc.strerror or exc}).") from exc
    try:
        records = list(csv.reader(text.splitlines()))
    except csv.Error as exc:
        raise DataError(f"{path.name} is not a valid CSV ({exc}).") from exc
    if not records:
        raise DataError(f"{path.name} is empty; it needs the columns id_code,diagnosis.")
    header = [h.strip().lower() for h in records[0]]
    if _CSV_ID not in header or _CSV_LABEL not in header:
        raise DataError(f"{path.name} needs the columns id_code,diagnosis (found: {','.join(records[0])}).")
    id_col, label_col = header.index(_CSV_ID), header.index(_CSV_LABEL)

    rows: dict[str, tuple[int, int]] = {}
    problems: list[Problem] = []
    rejected: dict[str, str] = {}
    for line, record in enumerate(records[1:], start=2):
        if not any(cell.strip() for cell in record):
            continue
        id_code = record[id_col].strip() if id_col < len(record) else ""
        value = record[label_col].strip() if label_col < len(record) else ""
        if not id_code:
            problems.append(Problem(f"{path.name}:{line}", "no_image_for_csv_row",
                                    f"{path.name} line {line}: the id_code is empty"))
            continue
        if _grade(value) is None:
            rejected.setdefault(id_code, f"{path.name} line {line}: diagnosis {value!r} is not a grade 0-4; fix the row")
            continue
        grade = int(value)
        if id_code in rows and rows[id_code][1] != grade:
            rejected.setdefault(id_code, f"{path.name} lines {rows[id_code][0]} and {line} give different grades "
                                         f"({rows[id_code][1]}, {grade}); keep one")
        rows.setdefault(id_code, (line, grade))
    for id_code in rejected:
        rows.pop(id_code, None)
    return rows, rejected, problems


def _image_lookup(files: list[Path]) -> dict[str, list[Path]]:
    lookup: dict[str, list[Path]] = {}
    for file in files:
        keys = {file.name, file.stem, file.name.lower(), file.stem.lower()}
        for key in keys:
            lookup.setdefault(key, []).append(file)
    return lookup


def _find(lookup: dict[str, list[Path]], id_code: str) -> list[Path] | None:
    return lookup.get(id_code) or lookup.get(id_code.lower())


# --- file walking -----------------------------------------------------------------------------------

def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in _JUNK_FILES


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def _files_in(folder: Path) -> Iterator[Path]:
    for p in sorted(folder.iterdir()):
        if p.is_file() and not _hidden(p.name):
            yield p


def _walk_files(folder: Path) -> Iterator[Path]:
    """Every visible regular file below ``folder``, in a stable order (symlinked folders are not followed)."""
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not _hidden(d))
        for name in sorted(files):
            if not _hidden(name):
                path = Path(current) / name
                if path.is_file():
                    yield path


def _suffix_text(path: Path) -> str:
    if path.suffix:
        return f"{path.suffix.lower()} is not one of {', '.join(sorted(IMAGE_SUFFIXES))}"
    return "no file extension and no DICOM marker"
