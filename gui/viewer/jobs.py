"""The Viewer's work off the UI thread: decode and predict one image, its saliency, a batch run."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from PySide6.QtGui import QImage

from core.jobs import NEVER_CANCELLED, CancelToken
from gui.viewer.image_view import qimage


@dataclass
class Analysis:
    """Everything shown for one image; built on a worker thread."""

    path: Path
    image: QImage
    image_size: tuple[int, int]
    prediction: object | None = None  # core.inference.Prediction
    saliency_method: str | None = None
    heatmap: QImage | None = None
    crop_box: tuple[float, float, float, float] | None = None
    dicom: list[tuple[str, str]] | None = None
    frame: int = 0
    """The frame shown (0-based) of ``frames`` in the file (a multi-frame DICOM has more than one)."""
    frames: int = 1


def analyse(path: Path, predictor=None, *, saliency: bool = False, identifying: bool = False, frame: int = 0,
            cancel: CancelToken = NEVER_CANCELLED) -> Analysis:
    """Decode, predict and (optionally) explain one image (frame ``frame`` of a multi-frame file). A worker
    job; ``cancel`` lets the page drop the work for an image the user has already moved past."""
    from core.data.images import open_image_file
    from core.inference import dicom_metadata, is_dicom_path

    cancel.check()
    opened = open_image_file(Path(path))
    frame = max(0, min(opened.info.frames - 1, frame))
    image = opened.frame(frame)
    result = Analysis(path=Path(path), image=qimage(image), image_size=image.size, frame=frame,
                      frames=opened.info.frames)
    if is_dicom_path(Path(path)):
        result.dicom = dicom_metadata(Path(path), identifying=identifying)
    if predictor is not None:
        cancel.check()
        result.prediction = predictor.predict_image(
            image, file=str(path), frame=frame if result.frames > 1 else None, laterality=opened.info.laterality)
        result.crop_box = predictor.crop_box(image.size, image)  # outlined: the region the model sees
        if saliency:
            cancel.check()
            result = add_saliency(result, predictor, image)
    return result


def add_saliency(result: Analysis, predictor, image=None) -> Analysis:
    """``result`` plus its heatmap (decoding the image again if needed). A worker job: it returns a new
    Analysis rather than changing the one the UI shows."""
    from core.data import load_image
    from core.inference import heatmap_image

    if image is None:
        image = load_image(result.path, frame=result.frame)
    target = result.prediction.predicted_index if result.prediction is not None else None
    saliency = predictor.saliency(image, target_index=target)
    return replace(result, saliency_method=saliency.method, heatmap=qimage(heatmap_image(saliency.heatmap)),
                   crop_box=predictor.crop_box(image.size, image))


def legend_gradient(width: int = 256) -> QImage:
    """The heatmap's colour scale from 0 (left) to 1 (right), as the heatmaps are coloured."""
    import numpy as np

    from core.inference import colorize

    row = colorize(np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :])
    data = np.ascontiguousarray(np.repeat(row, 2, axis=0)).tobytes()
    return QImage(data, width, 2, 3 * width, QImage.Format.Format_RGB888).copy()


def run_batch_job(predictor, inputs: list[Path], *, progress, cancel, on_event=None):
    """Predict every image under ``inputs`` (thumbnails and heatmaps kept for the HTML export)."""
    from core.errors import DataError
    from core.inference import batch_result, find_images, predict_files

    files = find_images(inputs)
    if not files:
        raise DataError("No images found there; choose a folder holding PNG, JPEG or DICOM images.")
    items = predict_files(predictor, files, thumbnails=True, report_heatmaps=True, on_item=on_event,
                          progress=progress, cancel=cancel)
    return batch_result(predictor, items)


