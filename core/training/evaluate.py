"""Evaluate a signed model package on a labelled image collection: ``run(config, *, progress, cancel)``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import DataError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress


@dataclass
class EvaluateConfig:
    model: Path
    data: Path
    labels_csv: Path | None = None
    allow_unverified: bool = False
    device: str = "cpu"
    home: Path | None = None
    """The hospital home whose trusted signers count (core.home; None: the default home)."""
    require_trusted: bool = False
    """Refuse a model whose signer the home does not trust (its card's claims would be unverified)."""
    schema_version: int = 1


def run(config: EvaluateConfig, *, progress: ProgressFn = no_progress,
        cancel: CancelToken = NEVER_CANCELLED) -> dict:
    """Metrics of the model on every usable labelled image; classes are matched by name."""
    from core.data import Preprocessing, load_tensors, validate
    from core.device import resolve_device
    from core.home import HospitalHome
    from core.models.package import load_model, read_package
    from core.models.trust import TrustStore, ensure_trusted, signer_status
    from core.training.loop import evaluate_model
    from core.training.metrics import majority_baseline

    package = read_package(config.model, require_signature=config.require_trusted or not config.allow_unverified)
    signer = signer_status(package, TrustStore(HospitalHome.at(config.home)))
    if config.require_trusted:
        ensure_trusted(Path(config.model).name, signer)
    spec = Preprocessing.from_dict(package.card.preprocessing)
    report = validate(config.data, labels_csv=config.labels_csv, min_size=spec.size,
                      progress=lambda f, m: progress(0.2 * f, m), cancel=cancel)
    model_classes = package.card.classes
    unknown = sorted(set(report.classes) - set(model_classes))
    if unknown:
        raise DataError(f"{config.data}: classes {unknown} are not among the model's classes {model_classes}.")
    remap = {i: model_classes.index(name) for i, name in enumerate(report.classes)}
    samples = [s for s in report.usable_samples if s.label is not None]
    if not samples:
        raise DataError(f"{config.data}: no usable labelled images to evaluate on.")
    images, labels = load_tensors(samples, spec, progress=lambda f, m: progress(0.2 + 0.6 * f, m),
                                  cancel=cancel)
    labels = labels.apply_(lambda v: remap[v])
    progress(0.8, "Predicting")
    metrics = evaluate_model(load_model(package), images, labels, spec, num_classes=len(model_classes),
                             device=resolve_device(config.device))
    progress(1.0, "Done")
    return {
        "model_path": str(Path(config.model).resolve()),
        "model_sha256": package.sha256,
        "signature_verified": package.signature_ok,
        "signer_trusted": signer.signer_trusted,
        "signer_fingerprint": signer.signer_fingerprint,
        "signer": signer.text,
        "classes": model_classes,
        "images": len(samples),
        "problems": len(report.problems),
        "majority_baseline": majority_baseline(labels.tolist()),
        "metrics": metrics,
    }
