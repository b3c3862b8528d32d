"""The validation report shown before any training: what is usable, and what is wrong with the rest.

Bad files never stop validation; each becomes a Problem with a reason. Only an unusable collection as
a whole (nothing found) raises DataError.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.data.dataset import Sample, open_dataset
from core.data.images import ImageReadError, decode_image
from core.data.problems import PROBLEM_KINDS, Problem
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

__all__ = ["Problem", "ValidationReport", "validate", "file_sha256"]

_PROBLEM_TITLES = {
    "unreadable": "Unreadable files (skipped)",
    "truncated": "Truncated files (skipped)",
    "not_image": "Not image files (skipped)",
    "duplicate": "Exact duplicates (only the first copy is used)",
    "too_small": "Smaller than the model input (used, upscaled)",
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
    problems: list[Problem]
    duplicates: list[list[str]]
    min_size: int
    usable_samples: list[Sample] = field(default_factory=list, repr=False)

    def problem_counts(self) -> dict[str, int]:
        return {kind: sum(1 for p in self.problems if p.kind == kind) for kind in PROBLEM_KINDS}

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["usable_samples"]  # paths to every image are for the trainer, not for the report
        data["problem_counts"] = self.problem_counts()
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def to_text(self, max_listed: int = 20) -> str:
        lines = [
            f"Dataset: {self.root}",
            f"Layout: {self.layout}   Files: {self.total_files}   Usable images: {self.usable}",
            "Images per class:",
        ]
        width = max((len(c) for c in self.classes), default=0)
        for name in self.classes:
            lines.append(f"  {name:<{width}}  {self.class_counts.get(name, 0)}")
        counts = self.problem_counts()
        if not self.problems:
            lines.append("No problems found.")
        for kind in PROBLEM_KINDS:
            if not counts[kind]:
                continue
            title = _PROBLEM_TITLES[kind]
            if kind == "too_small":
                title = f"Smaller than the model input of {self.min_size} px (used, upscaled)"
            lines.append(f"{title}: {counts[kind]}")
            listed = [p for p in self.problems if p.kind == kind]
            for problem in listed[:max_listed]:
                lines.append(f"  {problem.path}: {problem.reason}")
            if len(listed) > max_listed:
                lines.append(f"  ... and {len(listed) - max_listed} more (use --json for the full list)")
        return "\n".join(lines)


def file_sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def validate(path: Path, *, labels_csv: Path | None = None, min_size: int = 224,
             progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED) -> ValidationReport:
    """Open and fully decode every image of the collection at ``path``; report what is usable and why not."""
    dataset = open_dataset(Path(path), labels_csv=labels_csv)
    problems: list[Problem] = list(dataset.issues)
    first_by_hash: dict[str, Sample] = {}
    groups: dict[str, list[str]] = {}
    usable: list[Sample] = []
    total = len(dataset.samples)
    for done, sample in enumerate(dataset.samples):
        cancel.check()
        progress(done / max(total, 1), f"Checking {sample.path.name}")
        try:
            data = sample.path.read_bytes()
        except OSError as exc:
            problems.append(Problem(str(sample.path), "unreadable",
                                    f"cannot be read ({exc.strerror or exc}); check the file's permissions"))
            continue
        digest = file_sha256(data)
        first = first_by_hash.get(digest)
        if first is not None:
            groups.setdefault(digest, [str(first.path)]).append(str(sample.path))
            note = "" if first.label == sample.label else " (with a different label!)"
            problems.append(Problem(str(sample.path), "duplicate", f"same content as {first.path}{note}"))
            continue
        try:
            image = decode_image(data, sample.path.name)
        except ImageReadError as exc:
            problems.append(Problem(str(sample.path), exc.kind, _without_name(str(exc), sample.path.name)))
            continue
        first_by_hash[digest] = sample
        usable.append(sample)
        width, height = image.size
        if min(width, height) < min_size:
            problems.append(Problem(str(sample.path), "too_small",
                                    f"{width}x{height} px is smaller than the model input of {min_size} px; "
                                    "it will be upscaled"))
    progress(1.0, "Checked")

    class_counts = {name: 0 for name in dataset.classes}
    for sample in usable:
        if sample.label is not None:
            class_counts[dataset.classes[sample.label]] += 1
    return ValidationReport(
        root=str(dataset.root), layout=dataset.layout, classes=list(dataset.classes), class_counts=class_counts,
        total_files=total + len(dataset.unused_files), usable=len(usable), problems=problems, duplicates=list(groups.values()),
        min_size=min_size, usable_samples=usable,
    )


def _without_name(message: str, name: str) -> str:
    """Errors start with the file name, which the report already shows in the path column."""
    prefix = f"{name}: "
    return message[len(prefix):] if message.startswith(prefix) else message
