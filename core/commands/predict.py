"""``dopamine predict``: offline predictions with a signed model package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.commands.home import add_home_option, home_of
from core.commands.progress import progress_bar


def register(subparsers) -> None:
    predict = subparsers.add_parser(
        "predict", help="predict on images or folders with a model package (.dpm), offline",
        description="Predict on PNG, JPEG and DICOM images with a signed model package. Folders are searched "
                    "recursively; unreadable files are listed and skipped. Exit status 1 when no image at all "
                    "could be predicted.",
    )
    predict.add_argument("model", type=Path, metavar="MODEL.dpm")
    predict.add_argument("inputs", type=Path, nargs="+", metavar="IMAGE_OR_FOLDER")
    predict.add_argument("--csv", type=Path, metavar="OUT", help="write one row per file (probabilities, errors)")
    predict.add_argument("--report", type=Path, metavar="OUT.html",
                         help="write a self-contained HTML report with thumbnails and heatmaps")
    predict.add_argument("--heatmaps", type=Path, metavar="DIR", help="write a heatmap overlay PNG per image")
    predict.add_argument("--json", action="store_true", help="print a JSON list, one object per image")
    predict.add_argument("--allow-unverified", action="store_true",
                         help="use the model even if its signature does not verify (results marked unverified)")
    predict.add_argument("--require-trusted", action="store_true",
                         help="refuse a model unless its signer is trusted here (this hospital, a coordinator of a "
                              "federation it joined, or a key added with `dopamine trust add`)")
    add_home_option(predict)
    predict.add_argument("--threads", type=int, help="CPU threads (default: all)")
    predict.set_defaults(func=_predict)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def signer_line(name: str, signer) -> str:
    """One line on what the model's signature is worth here (core.models.trust.SignerStatus)."""
    if signer.level == "trusted":
        return f"{name}: {signer.text[0].lower()}{signer.text[1:]}."
    if signer.level == "invalid":
        return f"warning: {name}: the signature does NOT verify; every result is marked unverified."
    return (f"warning: {name}: valid signature, unknown signer {signer.signer_fingerprint}: the card's claims "
            "(privacy, training, accuracy) are unverified. If the sender confirms this fingerprint, "
            f"`dopamine trust add {name} --name SENDER` trusts it.")


def validation_line(name: str, assessment) -> str:
    """One line on whether the model's answers mean anything (core.inference.assessment.ModelAssessment)."""
    if assessment.trustworthy:
        return f"{name}: {assessment.message}"
    return (f"WARNING: {name}: {assessment.headline.upper()}. {assessment.message} Every answer below is marked "
            f"{assessment.marker}.")


def _predict(args: argparse.Namespace) -> int:
    from core.errors import ConfigError, SignatureError
    from core.inference import BatchConfig, open_model, run_with
    from core.models.trust import TrustStore

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, not {args.threads}.")
        import torch

        torch.set_num_threads(args.threads)
    if args.require_trusted and args.allow_unverified:
        raise ConfigError("--require-trusted and --allow-unverified contradict each other; choose one.")
    try:
        predictor = open_model(args.model, allow_unverified=args.allow_unverified,
                               trust=TrustStore(home_of(args)), require_trusted=args.require_trusted)
    except SignatureError as exc:
        if args.require_trusted:
            raise
        raise SignatureError(f"{exc} Only if you trust where it came from, pass --allow-unverified.") from exc
    print(signer_line(args.model.name, predictor.signer), file=sys.stderr)
    print(validation_line(args.model.name, predictor.assessment), file=sys.stderr)
    config = BatchConfig(model=args.model, inputs=list(args.inputs), csv=args.csv, report=args.report,
                         heatmaps=args.heatmaps, allow_unverified=args.allow_unverified, home=args.home,
                         require_trusted=args.require_trusted)
    with progress_bar("Predicting", enabled=not args.json) as progress:
        result = run_with(predictor, config, progress=progress)

    if args.json:
        rows = [item.prediction.to_dict() if item.prediction is not None
                else {"file": item.file, "error": item.error, "model_sha256": result.model_sha256,
                      "signature_verified": result.signature_verified, "signer_trusted": result.signer_trusted,
                      "signer_fingerprint": result.signer_fingerprint, "model_validation": result.model_validation}
                for item in result.items]
        print(json.dumps(rows, indent=2))
    else:
        for item in result.items:
            p = item.prediction
            if p is None:
                print(f"{item.file}: could not be read")
                continue
            line = f"{p.where}: {p.predicted_class} ({_percent(p.probabilities[p.predicted_class])})"
            if p.referable_dr is not None:
                assert p.referable_dr_probability is not None  # referable_dr is read from it
                line += f"; referable DR: {'yes' if p.referable_dr else 'no'} ({_percent(p.referable_dr_probability)})"
            line += f" {p.model_marker}" if p.model_marker else ""
            print(line + ("" if p.signer_trusted else " [UNKNOWN SIGNER]" if p.signature_verified
                          else " [UNVERIFIED MODEL]"))
            for warning in p.input_check.warnings if p.input_check is not None else []:
                print(f"  warning: {warning}")
        for label, path in (("CSV", result.csv), ("Report", result.report), ("Heatmaps", result.heatmaps)):
            if path is not None:
                print(f"{label}: {path}")
    for item in result.failures:
        print(f"skipped: {item.error}", file=sys.stderr)
    return 0 if result.predictions else 1
