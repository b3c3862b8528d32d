"""The images a comparison runs on: the hospital's collection, or synthetic fundus images made for it.

A collection is read with the app's own validation and cache (core.data). Two layouts:
one collection (``DATA/<class>/...`` or a labels CSV: split into virtual hospitals), or one folder per
hospital beside a ``test`` folder (``DATA/<hospital>/<class>/...``: the synthetic default's layout, and
what ``--split folders`` uses as the hospitals themselves).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from core.data.preprocess import Preprocessing
from core.data.store import ImageStore
from core.errors import ConfigError, DataError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress


@dataclass
class Collection:
    images: torch.Tensor | ImageStore  # uint8 [N, 3, S, S]; a large collection is read from disk
    labels: torch.Tensor  # int64 [N]
    groups: list[str]  # each image's hospital folder ("" for one collection; "test" for the test folder)
    classes: list[str]
    spec: Preprocessing
    source: str  # what the report says the images were
    problems: int  # files validation set aside


def synthetic_folder(out: Path, *, hospitals: int, images: int, size: int, test_fraction: float,
                     progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED) -> Path:
    """``out/data``: synthetic fundus images, one folder per hospital and a test folder (made once, reused)."""
    folder = out / "data"
    if (folder / "summary.json").is_file():
        return folder
    from core.data.synthetic import write_demo_data

    partial = out / "data.partial"
    shutil.rmtree(partial, ignore_errors=True)  # a run killed while drawing
    test = max(hospitals, round(images * test_fraction))
    per_hospital = max(1, (images - test) // hospitals)
    write_demo_data(partial, hospitals=hospitals, per_hospital=per_hospital, test_images=test, size=max(64, size),
                    progress=progress, cancel=cancel)
    partial.rename(folder)
    return folder


def is_synthetic(folder: Path) -> bool:
    try:
        return bool(json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("synthetic"))
    except (OSError, ValueError, AttributeError):
        return False


def _part_progress(progress: ProgressFn, share: tuple[float, float]) -> ProgressFn:
    """Progress of one hospital folder's validation, as its share of the first half of the job."""
    return lambda f, m: progress(0.5 * (share[0] + f * (share[1] - share[0])), m)


def load_collection(data: Path, *, labels_csv: Path | None, by_folder: bool, spec: Preprocessing,
                    cache_dir: Path, progress: ProgressFn = no_progress,
                    cancel: CancelToken = NEVER_CANCELLED) -> Collection:
    """Validate and load every usable labelled image of ``data``; ``by_folder``: one folder per hospital."""
    from core.data import validate
    from core.data.cache import load_images

    data = Path(data)
    if by_folder:
        if labels_csv is not None:
            raise ConfigError("--labels-csv reads one collection; drop it with hospital folders (--split folders).")
        parts = [p for p in sorted(data.iterdir()) if p.is_dir() and not p.name.startswith(".")] if data.is_dir() \
            else []
        if not parts:
            raise DataError(f"{data} holds no hospital folders; expected DATA/<hospital>/<class>/... and DATA/test/.")
    else:
        parts = [data]
    samples, groups, problems = [], [], 0
    classes: list[str] | None = None
    for index, part in enumerate(parts):
        share = (index / len(parts), (index + 1) / len(parts))
        report = validate(part, labels_csv=labels_csv, min_size=spec.size, preprocessing=spec, cancel=cancel,
                          progress=_part_progress(progress, share))
        if classes is None:
            classes = report.classes
        elif report.classes != classes:
            raise DataError(f"{part.name} has the classes {', '.join(report.classes)} but {parts[0].name} has "
                            f"{', '.join(classes)}; every hospital folder needs the same class folders.")
        usable = [s for s in report.usable_samples if s.label is not None]
        samples += usable
        groups += [part.name if by_folder else ""] * len(usable)
        problems += len(report.problems)
    if len(samples) < 4 or classes is None or len(classes) < 2:
        raise DataError(f"{data}: only {len(samples)} usable labelled images; a comparison needs at least two "
                        "classes and a few images of each.")
    images, labels = load_images(samples, spec, cache_dir=cache_dir, cancel=cancel,
                                 progress=lambda f, m: progress(0.5 + 0.5 * f, m))
    source = "synthetic fundus images (not patient data)" if is_synthetic(data) else str(data)
    return Collection(images, labels, groups, list(classes), spec, source, problems)
