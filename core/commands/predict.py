"""``dopamine predict``: offline predictions with a signed model package."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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
    predict.add_argument("--threads", type=int, help="CPU threads (default: all)")
    predict.set_defaults(func=_predict)


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _predict(args: argparse.Namespace) -> int:
    from core.errors import ConfigError, SignatureError
    from core.inference import BatchConfig, open_model, run_with

    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be at least 1, not {args.threads}.")
        import torch

        torch.set_num_threads(args.threads)
    try:
        predictor = open_model(args.model, allow_unverified=args.allow_unverified)
    except SignatureError as exc:
        raise SignatureError(f"{exc} Only if you trust where it came from, pass --allow-unverified.") from exc
    if not predictor.signature_verified:
        print(f"warning: {args.model.name}: the signature does NOT verify; every result is marked unverified.",
              file=sys.stderr)
    config = BatchConfig(model=args.model, inputs=list(args.inputs), csv=args.csv, report=args.report,
                         heatmaps=args.heatmaps, allow_unverified=args.allow_unverified)
    with progress_bar("Predicting", enabled=not args.json) as progress:
        result = run_with(predictor, config, progress=progress)

    if args.json:
        rows = [item.prediction.to_dict() if item.prediction is not None
                else {"file": item.file, "error": item.error, "model_sha256": result.model_sha256,
                      "signature_verified": result.signature_verified}
                for item in result.items]
        print(json.dumps(rows, indent=2))
    else:
        for item in result.items:
            p = item.prediction
            if p is None:
                print(f"{item.file}: could not be read")
                continue
            line = f"{p.file}: {p.predicted_class} ({_percent(p.probabilities[p.predicted_class])})"
            if p.referable_dr is not None:
                line += f"; referable DR: {'yes' if p.referable_dr else 'no'} ({_percent(p.referable_dr_probability)})"
            print(line + ("" if p.signature_verified else " [UNVERIFIED MODEL]"))
        for label, path in (("CSV", result.csv), ("Report", result.report), ("Heatmaps", result.heatmaps)):
            if path is not None:
                print(f"{label}: {path}")
    for item in result.failures:
        print(f"skipped: {item.error}", file=sys.stderr)
    return 0 if result.predictions else 1
