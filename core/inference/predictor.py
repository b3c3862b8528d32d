"""Open a signed model package and predict on single images.

The preprocessing is the training preprocessing itself (core.data.preprocess with the card's
preprocessing dict), so a prediction here is exactly what the model saw during evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from core.data import DR_CLASSES, Preprocessing, prepare
from core.data.preprocess import normalize, preprocess
from core.errors import ConfigError, InferenceError, ModelError, ModelPackageError
from core.inference.assessment import VALIDATED, ModelAssessment, assess, evaluation_of
from core.inference.input_check import InputCheck, check_input
from core.inference.saliency import Saliency, compute_saliency
from core.models.package import ModelCard, ModelPackage, load_model, read_package
from core.models.trust import SignerStatus, TrustedSigner, TrustStore, ensure_trusted, signer_status

REFERABLE_DR_MIN_GRADE = 2
"""Moderate NPDR or worse is referable diabetic retinopathy (the usual screening threshold)."""


@dataclass
class Prediction:
    """One image's result. ``signature_verified`` is False for a model opened despite a bad signature;
    ``signer_trusted`` is True only when, besides, the signer is one this hospital trusts (its own key,
    a coordinator it joined, a key the user added): otherwise the card's claims are unverified."""

    file: str
    predicted_index: int
    predicted_class: str
    probabilities: dict[str, float]
    model_sha256: str
    signature_verified: bool
    referable_dr_probability: float | None = None
    """P(grade >= 2) for diabetic-retinopathy models, else None."""
    signer_trusted: bool = False
    signer_fingerprint: str = ""
    frame: int | None = None
    """The frame's index (0-based) in a multi-frame file; None for a single image. Shown 1-based."""
    laterality: str | None = None
    """"L"/"R" when the file says which eye."""
    model_validation: str = VALIDATED
    """core.inference.assessment's level for the model: "validated", "not validated" or "baseline"."""
    model_warning: str = ""
    """Why the model's answers must not be relied on ("" for a validated model)."""
    model_marker: str = ""
    """"[NOT VALIDATED]" or "[NO BETTER THAN BASELINE]" beside every answer of such a model."""
    input_check: InputCheck | None = None
    """The size the model sees the image at, and warnings when it is far from the tested images."""

    @property
    def trustworthy(self) -> bool:
        """The model was validated on held-out images; its signer is a separate question."""
        return self.model_validation == VALIDATED

    @property
    def referable_text(self) -> str | None:
        """"Referable" / "Not referable", never without the warning when the model is not validated."""
        if self.referable_dr is None:
            return None
        verdict = "Referable" if self.referable_dr else "Not referable"
        return verdict if self.trustworthy else f"{verdict} {self.model_marker}"

    @property
    def frame_number(self) -> int | None:
        """The frame as viewers count it (1-based), or None."""
        return None if self.frame is None else self.frame + 1

    @property
    def where(self) -> str:
        """The file, with the frame (1-based) for a frame of a multi-frame file."""
        return self.file if self.frame is None else f"{self.file} [frame {self.frame + 1}]"

    @property
    def referable_dr(self) -> bool | None:
        """Referable when the model puts at least half of its probability on grade 2 or more."""
        if self.referable_dr_probability is None:
            return None
        return self.referable_dr_probability >= 0.5

    def to_dict(self) -> dict:
        """The JSON form printed by ``dopamine predict --json``."""
        out = {
            "file": self.file,
            "predicted_class": self.predicted_class,
            "probabilities": dict(self.probabilities),
            "model_sha256": self.model_sha256,
            "signature_verified": self.signature_verified,
            "signer_trusted": self.signer_trusted,
            "signer_fingerprint": self.signer_fingerprint,
        }
        if self.frame is not None:
            out["frame"] = self.frame_number
        if self.laterality is not None:
            out["laterality"] = self.laterality
        if self.referable_dr_probability is not None:
            out["referable_dr_probability"] = self.referable_dr_probability
            out["referable_dr"] = self.referable_dr
        out["model_validation"] = self.model_validation
        if self.model_warning:
            out["model_warning"] = self.model_warning
        if self.input_check is not None:
            out["input"] = self.input_check.to_dict()
        return out


def is_dr_model(classes: list[str]) -> bool:
    """A five-grade diabetic-retinopathy model, whose classes are the DR grades in order."""
    return list(classes) == list(DR_CLASSES)


@dataclass
class Predictor:
    """A loaded model ready to predict. Thread-safe: one forward or saliency pass at a time, because
    Grad-CAM attaches hooks to the shared model. ``signer`` is what the signature is worth here; it is
    replaced as a whole (never changed in place) when the hospital's trusted keys change."""

    package: ModelPackage
    model: torch.nn.Module
    spec: Preprocessing
    signer: SignerStatus | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if self.signer is None:
            self.signer = signer_status(self.package, None)
        self.assessment: ModelAssessment = assess(self.package.card)
        evaluation, _ = evaluation_of(self.package.card.metrics if isinstance(self.package.card.metrics, dict) else {})
        reference = (evaluation or {}).get("reference")
        self.reference: dict | None = reference if isinstance(reference, dict) else None

    @property
    def input_size(self) -> int:
        """The model sees input_size x input_size pixels."""
        return int(self.spec.size)

    def check_image(self, image: Image.Image, view: Image.Image | None = None) -> InputCheck:
        """How the model sees ``image`` (``view``: its prepared picture, if already made) and whether it is far
        from the images the model was tested on."""
        view = view if view is not None else self.model_view(image)
        colour = [float(v) for v in np.asarray(view, dtype=np.float64).reshape(-1, 3).mean(axis=0)]
        return check_input(image.size, self.input_size, colour, self.reference)

    @property
    def card(self) -> ModelCard:
        return self.package.card

    @property
    def classes(self) -> list[str]:
        return list(self.package.card.classes)

    @property
    def sha256(self) -> str:
        return self.package.sha256

    @property
    def signature_verified(self) -> bool:
        return bool(self.package.signature_ok)

    @property
    def signer_trusted(self) -> bool:
        assert self.signer is not None  # __post_init__ fills it
        return self.signer.signer_trusted

    @property
    def signer_fingerprint(self) -> str:
        assert self.signer is not None  # __post_init__ fills it
        return self.signer.signer_fingerprint

    @property
    def path(self) -> Path:
        return Path(self.package.path)

    def input_tensor(self, image: Image.Image) -> torch.Tensor:
        """The float32 [1, 3, S, S] batch the model sees for ``image`` (training preprocessing)."""
        return preprocess(image.convert("RGB"), self.spec).unsqueeze(0)

    def model_view(self, image: Image.Image) -> Image.Image:
        """The picture the model sees (resized and cropped: centre or retina), before normalization."""
        return prepare(image.convert("RGB"), self.spec).image

    def crop_box(self, image_size: tuple[int, int], image: Image.Image | None = None) -> tuple[float, float, float, float]:
        """(left, top, width, height) of the region the model sees, in the original image's pixels.

        Mirrors core.data.preprocess, so a heatmap can be drawn over the full-resolution image in the
        viewer. With the card's fundus crop the region depends on where the retina is, so ``image`` is
        needed (without it, the plain centre crop's region is returned). The region may extend past the
        frame where the retina is cut by it.
        """
        if self.spec.fundus_crop and image is not None:
            return prepare(image.convert("RGB"), self.spec).box
        width, height = image_size
        size = self.spec.size
        scale = self.spec.resize_to / min(width, height)
        resized_w = max(size, round(width * scale))
        resized_h = max(size, round(height * scale))
        left = int(round((resized_w - size) / 2.0))
        top = int(round((resized_h - size) / 2.0))
        sx, sy = width / resized_w, height / resized_h
        return left * sx, top * sy, size * sx, size * sy

    def probabilities(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities [N, C] for a preprocessed batch."""
        with self._lock, torch.inference_mode():
            logits = self.model(batch)
        if logits.ndim != 2 or logits.shape[1] != len(self.classes):
            raise InferenceError(
                f"{self.path.name}: the model gives {tuple(logits.shape)} outputs for "
                f"{len(self.classes)} classes; the package is inconsistent, ask its author for a new one."
            )
        return torch.softmax(logits.float(), dim=1)

    def predict_image(self, image: Image.Image, *, file: str = "", frame: int | None = None,
                      laterality: str | None = None) -> Prediction:
        """Predict one decoded image (``frame``, ``laterality``: what the file said, for the report)."""
        image = image.convert("RGB")
        prepared = prepare(image, self.spec)
        probs = self.probabilities(normalize(prepared.tensor(), self.spec).unsqueeze(0))[0]
        prediction = self._prediction(file, probs.numpy())
        prediction.frame, prediction.laterality = frame, laterality
        prediction.input_check = self.check_image(image, prepared.image)
        return prediction

    def predict_file(self, path: Path, frame: int | None = None) -> Prediction:
        """Decode (PNG, JPEG, DICOM, ...) and predict frame ``frame`` (0-based; multi-frame DICOM only);
        DataError for unreadable files."""
        from core.data.images import open_image_file

        opened = open_image_file(Path(path))
        index = frame if opened.info.frames > 1 else None
        return self.predict_image(opened.frame(frame or 0), file=str(path), frame=index,
                                  laterality=opened.info.laterality)

    def _prediction(self, file: str, probs: np.ndarray) -> Prediction:
        index = int(np.argmax(probs))
        classes = self.classes
        signer = self.signer
        assert signer is not None  # __post_init__ fills it
        referable = None
        if is_dr_model(classes):
            referable = float(probs[REFERABLE_DR_MIN_GRADE:].sum())
        return Prediction(
            file=file,
            predicted_index=index,
            predicted_class=classes[index],
            probabilities={name: float(p) for name, p in zip(classes, probs, strict=True)},
            model_sha256=self.sha256,
            signature_verified=self.signature_verified,
            referable_dr_probability=referable,
            signer_trusted=signer.signer_trusted,
            signer_fingerprint=signer.signer_fingerprint,
            model_validation=self.assessment.level,
            model_warning="" if self.assessment.trustworthy else self.assessment.message,
            model_marker=self.assessment.marker,
        )

    def saliency(self, image: Image.Image, *, target_index: int | None = None) -> Saliency:
        """Where the model looked for ``target_index`` (default: its predicted class); see core.inference.saliency."""
        batch = self.input_tensor(image)
        with self._lock:
            return compute_saliency(self.model, batch, target_index=target_index)


def open_model(
    path: Path,
    *,
    allow_unverified: bool = False,
    trust: TrustStore | Mapping[bytes, TrustedSigner] | None = None,
    require_trusted: bool = False,
) -> Predictor:
    """Read, verify and load a .dpm package; ``trust`` (a hospital's TrustStore) says whose signature counts.

    A package whose signature does not verify raises SignatureError unless ``allow_unverified``; then
    it is loaded with ``signature_verified`` False and every Prediction it makes says so. A valid
    signature by a signer ``trust`` does not hold (or with no ``trust``) loads with ``signer_trusted``
    False, unless ``require_trusted``, which refuses it (and an unverified one) with SignatureError.
    """
    path = Path(path)
    package = read_package(path, require_signature=require_trusted or not allow_unverified)
    signer = signer_status(package, trust)
    if require_trusted:
        ensure_trusted(path.name, signer)
    try:
        spec = Preprocessing.from_dict(dict(package.card.preprocessing))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelPackageError(
            f"{path.name}: the model card's preprocessing is invalid ({exc}); ask its author for a new package."
        ) from exc
    if not package.card.classes:
        raise ModelPackageError(f"{path.name}: the model card lists no classes; ask its author for a new package.")
    try:
        model = load_model(package)
    except ModelError as exc:
        raise ModelPackageError(f"{path.name}: {exc}") from exc
    model.eval()
    return Predictor(package=package, model=model, spec=spec, signer=signer)
