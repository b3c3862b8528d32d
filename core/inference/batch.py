"""Batch prediction: many files to a CSV, an HTML report and heatmap images.

Each frame of a multi-frame DICOM file is one item (the file name plus its frame number). A file that
cannot be decoded is reported and the batch goes on; a model that cannot predict stops it.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from core.data.images import ImageFile, open_image_file
from core.errors import DataError, DopamineError
from core.inference.assessment import ModelAssessment
from core.inference.files import find_images
from core.inference.output import check_writable, write_output
from core.inference.predictor import Prediction, Predictor, open_model
from core.inference.report import write_csv, write_html
from core.inference.saliency import overlay
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress
from core.models.trust import SignerStatus

THUMBNAIL_PX = 160
HEATMAP_OPACITY = 0.45


@dataclass
class BatchConfig:
    model: Path
    inputs: list[Path]
    csv: Path | None = None
    report: Path | None = None
    heatmaps: Path | None = None
    """Folder for one heatmap overlay PNG per image (mirroring the input folders)."""
    allow_unverified: bool = False
    report_heatmaps: bool = True
    """Put a heatmap beside each thumbnail in the HTML report (one backward pass per image)."""
    home: Path | None = None
    """The hospital home whose trusted signers count (core.home; None: the default home)."""
    require_trusted: bool = False
    """Refuse a model whose signer the home does not trust."""
    schema_version: int = 1


@dataclass
class BatchItem:
    file: str
    prediction: Prediction | None = None
    frame: int | None = None
    """The frame's index (0-based) in a multi-frame file; None for a single image."""
    error: str | None = None
    saliency_method: str | None = None
    heatmap_file: str | None = None
    thumbnail_jpeg: bytes | None = field(default=None, repr=False)
    heatmap_jpeg: bytes | None = field(default=None, repr=False)


@dataclass
class BatchResult:
    model_path: str
    model_sha256: str
    signature_verified: bool
    classes: list[str]
    items: list[BatchItem]
    csv: Path | None = None
    report: Path | None = None
    heatmaps: Path | None = None
    signer: SignerStatus | None = None
    assessment: ModelAssessment | None = None
    """Whether the model was validated on held-out images (core.inference.assessment)."""

    @property
    def model_validation(self) -> str:
        return self.assessment.level if self.assessment is not None else ""

    @property
    def signer_trusted(self) -> bool:
        return self.signer is not None and self.signer.signer_trusted

    @property
    def signer_fingerprint(self) -> str:
        return self.signer.signer_fingerprint if self.signer is not None else ""

    @property
    def predictions(self) -> list[Prediction]:
        return [item.prediction for item in self.items if item.prediction is not None]

    @property
    def failures(self) -> list[BatchItem]:
        return [item for item in self.items if item.error is not None]


def _jpeg(image: Image.Image, max_px: int = THUMBNAIL_PX) -> bytes:
    small = image.convert("RGB")
    small.thumbnail((max_px, max_px), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _heatmap_names(files: list[Path]) -> dict[Path, Path]:
    """Relative output name per file, mirroring folders below the files' common parent (so unique)."""
    parents = [str(f.resolve().parent) for f in files]
    root = Path(os.path.commonpath(parents)) if parents else Path()
    return {f: f.resolve().relative_to(root).with_name(f.name + ".heatmap.png") for f in files}


def _frame_name(name: Path, frame: int | None) -> Path:
    """a.dcm.heatmap.png for a single image, a.dcm.frame2.heatmap.png for frame index 1 of a series."""
    if frame is None:
        return name
    return name.with_name(name.name.removesuffix(".heatmap.png") + f".frame{frame + 1}.heatmap.png")


def _guarded(path: Path, action):
    """Run a decoding step on an untrusted file; any decoder failure becomes a DataError for this file."""
    try:
        return action()
    except DopamineError:
        raise
    except Exception as exc:  # noqa: BLE001 - hostile files can break decoders in any way
        raise DataError(f"{path.name}: could not be decoded ({type(exc).__name__}); check the file.") from exc


def _read(path: Path) -> ImageFile:
    return _guarded(path, lambda: open_image_file(path))


def predict_files(
    predictor: Predictor,
    files: list[Path],
    *,
    heatmaps: Path | None = None,
    thumbnails: bool = False,
    report_heatmaps: bool = False,
    on_item: Callable[[BatchItem], None] | None = None,
    progress: ProgressFn = no_progress,
    cancel: CancelToken = NEVER_CANCELLED,
) -> list[BatchItem]:
    """Predict each file with an open predictor; decoding failures become items with ``error`` set."""
    names = _heatmap_names(files) if heatmaps is not None else {}
    items: list[BatchItem] = []
    total = max(1, len(files))
    for index, path in enumerate(files):
        cancel.check()
        progress(index / total, f"{index + 1}/{len(files)} {path.name}")
        opened: ImageFile | None
        opening_error: str | None
        try:
            opened = _read(path)
        except DataError as exc:
            frames: list[int | None] = [None]
            opened, opening_error = None, str(exc)
        else:
            frames = [None] if opened.info.frames == 1 else list(range(opened.info.frames))
            opening_error = None
        for frame in frames:
            cancel.check()
            item = BatchItem(file=str(path), frame=frame, error=opening_error)
            if opened is not None:
                _predict_item(predictor, item, opened, path, heatmaps / _frame_name(names[path], frame)
                              if heatmaps is not None else None, thumbnails, report_heatmaps)
            items.append(item)
            if on_item is not None:
                on_item(item)
    progress(1.0, f"{len(files)} files done")
    return items


def _predict_item(predictor: Predictor, item: BatchItem, opened: ImageFile, path: Path, heatmap: Path | None,
                  thumbnails: bool, report_heatmaps: bool) -> None:
    try:
        image = _guarded(path, lambda: opened.frame(item.frame or 0))
    except DataError as exc:
        item.error = str(exc)
        return
    item.prediction = predictor.predict_image(image, file=str(path), frame=item.frame,
                                              laterality=opened.info.laterality)
    if thumbnails:
        item.thumbnail_jpeg = _jpeg(image)
    if heatmap is not None or (thumbnails and report_heatmaps):
        saliency = predictor.saliency(image, target_index=item.prediction.predicted_index)
        item.saliency_method = saliency.method
        blended = overlay(predictor.model_view(image), saliency.heatmap, opacity=HEATMAP_OPACITY)
        if heatmap is not None:
            write_output(heatmap, _png(blended))
            item.heatmap_file = str(heatmap)
        if thumbnails and report_heatmaps:
            item.heatmap_jpeg = _jpeg(blended)


def batch_result(predictor: Predictor, items: list[BatchItem]) -> BatchResult:
    """Wrap items predicted with ``predictor`` (for write_csv / write_html)."""
    return BatchResult(model_path=str(predictor.path), model_sha256=predictor.sha256,
                       signature_verified=predictor.signature_verified, classes=predictor.classes, items=items,
                       signer=predictor.signer, assessment=predictor.assessment)


def run_with(
    predictor: Predictor,
    config: BatchConfig,
    *,
    progress: ProgressFn = no_progress,
    cancel: CancelToken = NEVER_CANCELLED,
    on_item: Callable[[BatchItem], None] | None = None,
) -> BatchResult:
    """The batch with a predictor already open (the viewer reuses the model the user confirmed)."""
    for output in (config.csv, config.report):
        if output is not None:
            check_writable(output)
    if config.heatmaps is not None:
        check_writable(config.heatmaps, folder=True)
    files = find_images(config.inputs)
    if not files:
        shown = ", ".join(str(p) for p in config.inputs)
        raise DataError(f"No images found in {shown}; choose files or folders holding PNG, JPEG or DICOM images.")
    items = predict_files(
        predictor, files, heatmaps=config.heatmaps, thumbnails=config.report is not None,
        report_heatmaps=config.report_heatmaps, on_item=on_item, progress=progress, cancel=cancel,
    )
    result = batch_result(predictor, items)
    result.heatmaps = config.heatmaps
    if config.csv is not None:
        write_csv(config.csv, result)
        result.csv = config.csv
    if config.report is not None:
        write_html(config.report, result, predictor.package)
        result.report = config.report
    return result


def run(config: BatchConfig, *, progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED) -> BatchResult:
    """Open ``config.model`` (refusing an unverified one unless allowed, an untrusted signer if asked) and
    predict every input."""
    from core.home import HospitalHome
    from core.models.trust import TrustStore

    progress(0.0, f"Opening {Path(config.model).name}")
    predictor = open_model(config.model, allow_unverified=config.allow_unverified,
                           trust=TrustStore(HospitalHome.at(config.home)), require_trusted=config.require_trusted)
    return run_with(predictor, config, progress=progress, cancel=cancel)
