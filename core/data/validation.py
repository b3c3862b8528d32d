"""The validation report shown before any training: what is usable, what is wrong with the rest, and the
collection's make-up (cameras, resolutions, left and right eyes, formats).

Bad files never stop validation; each becomes a Problem with a reason. Only an unusable collection as
a whole (nothing found) raises DataError. Each frame of a multi-frame DICOM file is one sample. Folders that
look like the wrong choice (a test split, the parent of the right folder, classes that are not grades or not
those expected) become LayoutWarnings.

It is one module past 400 lines because the problems, the warnings and the make-up all come from the one
pass over the collection that ``validate`` makes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
from collections import Counter
from collections.abc import Generator
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.data.dataset import DR_CLASSES, HospitalDataset, Sample, open_dataset
from core.data.decode import POOL_MIN_FILES, FileCheck, check_file, checked_in_pool, decode_workers
from core.data.images import MAX_FRAMES_PER_FILE, ImageInfo, is_image_file
from core.data.problems import NOTES, PROBLEM_KINDS, Problem
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

__all__ = ["LayoutWarning", "Problem", "ValidationReport", "class_mismatch", "file_sha256", "layout_warnings",
           "make_up", "validate"]

# Folder names that say "held-out test set": training or joining with one leaks the test set into training.
TEST_SPLIT_NAME = re.compile(r"^(test|tests|testing|val|valid|validation|hold[-_ ]?out|held[-_ ]?out|eval|"
                             r"evaluation)([-_ ].*|\d*)$", re.IGNORECASE)
LISTED = 5


@dataclass(frozen=True)
class LayoutWarning:
    """Something about the collection's folders that makes it likely the wrong choice (it is still usable).

    kind: "test_split" (a folder named like a held-out test set), "nested_classes" (a class folder holds
    class folders: the parent of the right folder was chosen), "not_grades" (the class folders are not DR
    grades), "other_classes" (not the classes the model or federation expects)."""

    kind: str
    message: str

_PROBLEM_TITLES = {
    "unreadable": "Unreadable files (skipped)",
    "truncated": "Truncated files (skipped)",
    "not_image": "Not image files (skipped)",
    "too_many_frames": "Files with too many frames (skipped)",
    "duplicate": "Exact duplicates (only the first copy is used)",
    "too_small": "Smaller than the model input (used, upscaled)",
    "no_fundus_disc": "No retina found for the fundus crop (used with the plain resize and centre crop)",
    "no_image_for_csv_row": "CSV rows with no image",
    "no_label": "Images with no label (skipped)",
}


@dataclass
class ValidationReport:
    root: str
    layout: str
    classes: list[str]
    class_counts: dict[str, int]
    total_files: int
    usable: int
    """Usable images (samples): a multi-frame file counts once per frame."""
    problems: list[Problem]
    duplicates: list[list[str]]
    min_size: int
    usable_samples: list[Sample] = field(default_factory=list, repr=False)
    usable_files: int = 0
    make_up: dict[str, Any] = field(default_factory=dict)
    """Cameras, resolutions, laterality, formats (see ``make_up``); fundus-crop results when checked."""
    warnings: list[LayoutWarning] = field(default_factory=list)
    """Why this is probably not the folder to train or join with (see LayoutWarning); [] when none."""
    image_sizes: list[tuple[int, int]] = field(default_factory=list, repr=False)
    """(width, height) of each usable file, so small images can be counted for any model input size."""

    def smaller_than(self, size: int) -> int:
        """How many usable files have a side shorter than ``size`` pixels (they are enlarged to the input)."""
        return sum(1 for width, height in self.image_sizes if min(width, height) < size)

    def small_images_line(self, size: int) -> str:
        """One line for all small images at model input ``size`` ("" when there are none)."""
        count = self.smaller_than(size)
        if not count:
            return ""
        smallest = min(min(w, h) for w, h in self.image_sizes)
        return (f"{count} image(s) are smaller than the model input of {size} px (the smallest: {smallest} px); "
                "they are used, enlarged.")

    def problem_counts(self) -> dict[str, int]:
        return {kind: sum(1 for p in self.problems if p.kind == kind) for kind in PROBLEM_KINDS}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["usable_samples"]  # paths to every image are for the trainer, not for the report
        del data["image_sizes"]
        data["problem_counts"] = self.problem_counts()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_text(self, max_listed: int = 20) -> str:
        frames = f" (from {self.usable_files} files)" if self.usable_files != self.usable else ""
        lines = [
            f"Dataset: {self.root}",
            f"Layout: {self.layout}   Files: {self.total_files}   Usable images: {self.usable}{frames}",
            "Images per class:",
        ]
        width = max((len(c) for c in self.classes), default=0)
        for name in self.classes:
            lines.append(f"  {name:<{width}}  {self.class_counts.get(name, 0)}")
        for warning in self.warnings:
            lines.append(f"WARNING: {warning.message}")
        lines += make_up_lines(self.make_up)
        counts = self.problem_counts()
        if not self.problems:
            lines.append("No problems found.")
        for kind in PROBLEM_KINDS:
            if not counts[kind]:
                continue
            title = _PROBLEM_TITLES[kind]
            if kind == "too_small":  # one line for all of them: they are used, and can be thousands
                lines.append(self.small_images_line(self.min_size) or f"{title}: {counts[kind]}")
                continue
            lines.append(f"{title}: {counts[kind]}")
            listed = [p for p in self.problems if p.kind == kind]
            for problem in listed[:max_listed]:
                lines.append(f"  {problem.path}: {problem.reason}")
            if len(listed) > max_listed:
                lines.append(f"  ... and {len(listed) - max_listed} more (use --json for the full list)")
        return "\n".join(lines)

    @property
    def serious_problems(self) -> int:
        """Problems that cost a file or a row (small images and fundus-crop fallbacks are still used)."""
        return sum(1 for p in self.problems if p.kind not in NOTES)


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate(path: Path, *, labels_csv: Path | None = None, min_size: int = 224, preprocessing: Any = None,
             max_frames: int = MAX_FRAMES_PER_FILE, expected_classes: list[str] | None = None,
             expected_from: str = "the plan", progress: ProgressFn = no_progress,
             cancel: CancelToken = NEVER_CANCELLED, workers: int | None = None) -> ValidationReport:
    """Open and fully decode every image of the collection at ``path``; report what is usable and why not.

    ``preprocessing`` (core.data.preprocess.Preprocessing): with ``fundus_crop`` on, every image is also
    searched for the retina's disc, and images where none is found are reported (they fall back to the
    plain pipeline). ``max_frames``: the most frames a multi-frame file may hold. ``expected_classes``:
    the classes the model or federation (``expected_from``) trains; other classes are warned about.
    ``workers``: decoding processes (None: core.data.decode.decode_workers() for POOL_MIN_FILES files or
    more; 1: this process). The report is the same either way: files are judged in the collection's order.
    """
    dataset = open_dataset(Path(path), labels_csv=labels_csv)
    warnings = layout_warnings(dataset, expected_classes, expected_from)
    sizes: list[tuple[int, int]] = []
    problems: list[Problem] = list(dataset.issues)
    first_by_hash: dict[str, Sample] = {}
    groups: dict[str, list[str]] = {}
    usable: list[Sample] = []
    infos: list[ImageInfo] = []
    fundus = _FundusCheck() if preprocessing is not None and getattr(preprocessing, "fundus_crop", False) else None
    total = len(dataset.samples)
    usable_files = 0
    with closing(_checked(dataset.samples, max_frames, fundus is not None, workers, cancel)) as checks:
        for done, (sample, check) in enumerate(zip(dataset.samples, checks, strict=True)):
            cancel.check()
            progress(done / max(total, 1), f"Checking {sample.path.name}")
            if check.read_error is not None or check.digest is None:
                problems.append(Problem(str(sample.path), "unreadable",
                                        f"cannot be read ({check.read_error}); check the file's permissions"))
                continue
            digest = check.digest
            first = first_by_hash.get(digest)
            if first is not None:
                groups.setdefault(digest, [str(first.path)]).append(str(sample.path))
                note = "" if first.label == sample.label else " (with a different label!)"
                problems.append(Problem(str(sample.path), "duplicate", f"same content as {first.path}{note}"))
                continue
            if fundus is not None:
                # the frames decoded before an error were checked too, as when one process walked them
                several = check.info is None or check.info.frames > 1
                for index, search in enumerate(check.searches):
                    fundus.record(search, sample, index if several else None, problems)
            if check.error is not None or check.info is None:
                problems.append(Problem(str(sample.path), check.error_kind or "unreadable",
                                        _without_name(check.error or "", sample.path.name)))
                continue
            info, frames = check.info, check.sizes
            first_by_hash[digest] = sample
            usable_files += 1
            for index in range(info.frames):
                usable.append(Sample(sample.path, sample.label, frame=index if info.frames > 1 else None,
                                     laterality=info.laterality))
                infos.append(info)
            width, height = frames[0]
            sizes.append((width, height))
            if min(width, height) < min_size:
                problems.append(Problem(str(sample.path), "too_small",
                                        f"{width}x{height} px is smaller than the model input of {min_size} px; "
                                        "it will be upscaled"))
    progress(1.0, "Checked")

    class_counts = {name: 0 for name in dataset.classes}
    for sample in usable:
        if sample.label is not None:
            class_counts[dataset.classes[sample.label]] += 1
    summary = make_up(infos)
    if fundus is not None:
        summary["fundus_crop"] = fundus.summary()
    return ValidationReport(
        root=str(dataset.root), layout=dataset.layout, classes=list(dataset.classes), class_counts=class_counts,
        total_files=total + len(dataset.unused_files), usable=len(usable), problems=problems,
        duplicates=list(groups.values()), min_size=min_size, usable_samples=usable, usable_files=usable_files,
        make_up=summary, warnings=warnings, image_sizes=sizes,
    )


def class_mismatch(classes: list[str], expected: list[str], expected_from: str = "the plan") -> str:
    """Why images with ``classes`` cannot train a model of ``expected`` classes ("" when they can)."""
    if list(classes) == list(expected):
        return ""
    return (f"The classes here ({_names(classes)}) are not the classes of {expected_from} ({_names(expected)}): "
            "its model would learn the wrong answers. Choose a folder with one sub-folder per class of "
            f"{expected_from}.")


def layout_warnings(dataset: HospitalDataset, expected_classes: list[str] | None = None,
                    expected_from: str = "the plan") -> list[LayoutWarning]:
    """What makes this collection look like the wrong choice: a test split, the parent of the right folder,
    class folders that are not grades, or classes other than those expected."""
    root = Path(dataset.root)
    warnings: list[LayoutWarning] = []
    if TEST_SPLIT_NAME.match(root.name):
        warnings.append(LayoutWarning("test_split", (
            f"The folder {root.name} is named like a held-out test set. Train and join with this hospital's "
            "training images only: test images used for training make every accuracy measured on them "
            "meaningless.")))
    folders = _class_folders(root) if dataset.layout == "folders" else []
    tests = [folder.name for folder in folders if TEST_SPLIT_NAME.match(folder.name)]
    if tests:
        named = f"folder {tests[0]} is" if len(tests) == 1 else f"folders {_names(tests)} are"
        warnings.append(LayoutWarning("test_split", (
            f"The class {named} named like a held-out test set: its images would become training images of a "
            "class of that name.")))
    nested = [(folder.name, inner) for folder in folders if (inner := _folders_with_images(folder))]
    for name, inner in nested[:LISTED]:
        advice = "" if TEST_SPLIT_NAME.match(name) else \
            f" If {name} is one hospital's collection, choose {name} itself."
        warnings.append(LayoutWarning("nested_classes", (
            f"The class folder {name} itself holds folders of images ({_names(inner)}): every image below it "
            f"becomes class “{name}”.{advice}")))
    if expected_classes is not None:
        mismatch = class_mismatch(dataset.classes, expected_classes, expected_from)
        if mismatch:
            warnings.append(LayoutWarning("other_classes", mismatch))
    elif dataset.layout == "folders" and list(dataset.classes) != list(DR_CLASSES):
        warnings.append(LayoutWarning("not_grades", (
            f"The class folders ({_names(dataset.classes)}) are not DR grades (0-4, or No DR … Proliferative "
            "DR): each becomes a class of its own. If they are hospitals or splits, choose one of them instead.")))
    return warnings


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED * 2])
    return shown + (f" and {len(names) - LISTED * 2} more" if len(names) > LISTED * 2 else "")


def _class_folders(root: Path) -> list[Path]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return []
    return [Path(e.path) for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]


def _folders_with_images(folder: Path) -> list[str]:
    """The sub-folders of ``folder`` that hold an image somewhere below them (stops at the first image)."""
    found = []
    for sub in _class_folders(folder):
        for parent, subfolders, names in os.walk(sub):
            subfolders[:] = [d for d in subfolders if not d.startswith(".")]
            if any(not n.startswith(".") and is_image_file(Path(parent) / n) for n in names):
                found.append(sub.name)
                break
    return found


class _FundusCheck:
    """Counts how the fundus crop fares on each image; a fallback is reported as a (non-serious) problem."""

    def __init__(self) -> None:
        self.checked = self.found = self.partial = 0
        self.reasons: Counter[str] = Counter()

    def check(self, image, sample: Sample, frame: int | None, problems: list[Problem]) -> None:
        from core.data.fundus import find_disc

        self.record(find_disc(image), sample, frame, problems)

    def record(self, search, sample: Sample, frame: int | None, problems: list[Problem]) -> None:
        """Count one disc search (core.data.fundus.DiscSearch), made here or in a decoding process."""
        self.checked += 1
        if search.disc is None:
            self.reasons[search.reason] += 1
            where = str(sample.path) if frame is None else f"{sample.path} [frame {frame + 1}]"
            problems.append(Problem(where, "no_fundus_disc",
                                    f"{search.reason}; the plain resize and centre crop is used"))
            return
        self.found += 1
        self.partial += int(search.disc.partial)

    def summary(self) -> dict[str, Any]:
        return {"checked": self.checked, "disc_found": self.found, "disc_cut_by_frame": self.partial,
                "fell_back": self.checked - self.found, "fallback_reasons": dict(self.reasons.most_common())}


def make_up(infos: list[ImageInfo]) -> dict[str, Any]:
    """The collection's make-up, one entry per usable image: cameras/devices, resolutions, laterality,
    formats and DICOM transfer syntaxes, field of view. "unknown" where the files do not say."""
    if not infos:
        return {}
    sides = Counter(info.laterality or "unknown" for info in infos)
    widths = [info.width for info in infos]
    heights = [info.height for info in infos]
    resolutions = Counter(info.resolution for info in infos)
    result: dict[str, Any] = {
        "images": len(infos),
        "devices": _unknown_last(Counter(info.device or "unknown" for info in infos)),
        "resolution": {
            "distinct": len(resolutions),
            "most_common": [[name, count] for name, count in resolutions.most_common(5)],
            "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
            "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)},
        },
        "laterality": {"left": sides.get("L", 0), "right": sides.get("R", 0), "unknown": sides.get("unknown", 0)},
        "formats": dict(Counter(info.format or "unknown" for info in infos).most_common()),
    }
    syntaxes = Counter(info.transfer_syntax for info in infos if info.format == "DICOM" and info.transfer_syntax)
    if syntaxes:
        result["dicom_transfer_syntaxes"] = dict(syntaxes.most_common())
    views = Counter(info.field_of_view for info in infos if info.field_of_view)
    if views:
        result["field_of_view"] = dict(views.most_common())
    multi = [info for info in infos if info.frames > 1]
    if multi:
        result["multi_frame"] = {"images": len(multi), "files": len({id(info) for info in multi})}
    return result


def _unknown_last(counts: Counter[str]) -> dict[str, int]:
    ordered = dict(counts.most_common())
    if "unknown" in ordered:
        ordered["unknown"] = ordered.pop("unknown")
    return ordered


def make_up_lines(summary: dict[str, Any]) -> list[str]:
    """The make-up as indented report lines (empty when there is nothing to say)."""
    if not summary:
        return []
    lines = ["Make-up:"]
    devices = summary.get("devices", {})
    if set(devices) != {"unknown"}:
        lines.append("  Cameras/devices: " + ", ".join(f"{name} {count}" for name, count in devices.items()))
    else:
        lines.append("  Cameras/devices: not recorded in the files")
    resolution = summary.get("resolution", {})
    if resolution:
        width, height = resolution["width"], resolution["height"]
        common = ", ".join(f"{name} ({count})" for name, count in resolution["most_common"])
        lines.append(f"  Resolutions: {resolution['distinct']} distinct; width {width['min']}-{width['max']} "
                     f"(median {width['median']:g}), height {height['min']}-{height['max']} "
                     f"(median {height['median']:g}); most common {common}")
    sides = summary.get("laterality", {})
    if sides:
        if sides["left"] or sides["right"]:
            known = sides["left"] + sides["right"]
            lines.append(f"  Eyes: left {sides['left']}, right {sides['right']} ({sides['left'] / known:.0%} left), "
                         f"unknown {sides['unknown']}")
        else:
            lines.append("  Eyes: laterality not recorded in the files")
    lines.append("  Formats: " + ", ".join(f"{name} {count}" for name, count in summary.get("formats", {}).items()))
    if "dicom_transfer_syntaxes" in summary:
        lines.append("  DICOM compression: " + ", ".join(
            f"{name} {count}" for name, count in summary["dicom_transfer_syntaxes"].items()))
    if "field_of_view" in summary:
        lines.append("  Field of view: " + ", ".join(f"{name} {count}" for name, count in summary["field_of_view"].items()))
    if "multi_frame" in summary:
        multi = summary["multi_frame"]
        lines.append(f"  Multi-frame: {multi['images']} images from {multi['files']} file(s) (each frame is one image)")
    crop = summary.get("fundus_crop")
    if crop:
        lines.append(f"  Fundus crop: retina found in {crop['disc_found']} of {crop['checked']} images "
                     f"({crop['disc_cut_by_frame']} cut by the frame); {crop['fell_back']} use the plain crop")
        for reason, count in crop.get("fallback_reasons", {}).items():
            lines.append(f"    {count}: {reason}")
    return lines


def _checked(samples: list[Sample], max_frames: int, fundus: bool, workers: int | None,
             cancel: CancelToken) -> Generator[FileCheck, None, None]:
    """check_file of every sample's file, in order: in a pool of processes for a large collection (every
    file is decoded there, duplicates too), else here (a file with the content of an earlier good one is
    only hashed)."""
    pool = workers if workers is not None else decode_workers()
    paths = [str(sample.path) for sample in samples]
    if pool > 1 and (workers is not None or len(paths) >= POOL_MIN_FILES):
        yield from checked_in_pool(paths, max_frames=max_frames, fundus=fundus, workers=pool, cancel=cancel)
        return
    good: set[str] = set()
    for path in paths:
        check = check_file(path, max_frames=max_frames, fundus=fundus, skip=good, cancel=cancel)
        if check.digest is not None and check.info is not None:
            good.add(check.digest)
        yield check


def _without_name(message: str, name: str) -> str:
    """Errors start with the file name, which the report already shows in the path column."""
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message
