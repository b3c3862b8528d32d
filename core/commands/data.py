"""``dopamine demo-data`` (write a SYNTHETIC demo federation) and ``dopamine inspect`` (validation report)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.commands.progress import progress_bar


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo-data",
        help="write SYNTHETIC fundus images for a demo federation (not real patient data)",
        description="Write SYNTHETIC fundus photographs graded 0-4 for K simulated hospitals plus a test set: "
                    "OUT/hospital_NN/<grade>/*.png and OUT/test/<grade>/*.png. Not real patient data.",
    )
    demo.add_argument("out", type=Path, metavar="OUT", help="new or empty folder to write")
    demo.add_argument("--hospitals", type=int, default=3, metavar="K", help="number of hospitals (default 3)")
    demo.add_argument("--per-hospital", type=int, default=200, metavar="N", help="images per hospital (default 200)")
    demo.add_argument("--test-images", type=int, default=200, metavar="N", help="held-out test images (default 200)")
    demo.add_argument("--size", type=int, default=256, metavar="PX", help="image width and height (default 256)")
    demo.add_argument("--seed", type=int, default=0, metavar="S", help="the same seed gives identical files")
    demo.add_argument("--dicom", action="store_true",
                      help="also write OUT/dicom/<grade>/*.dcm: SYNTHETIC Ophthalmic Photography DICOM files, "
                           "one per transfer syntax (JPEG, JPEG Lossless, JPEG-LS, JPEG 2000, RLE, ...) and "
                           "two stereo pairs")
    demo.add_argument("--json", action="store_true", help="print only a JSON summary on stdout")
    demo.set_defaults(func=_demo_data)

    inspect = subparsers.add_parser(
        "inspect",
        help="check an image collection before training (validation report)",
        description="Open every image of a collection (class folders, APTOS CSV or DICOM) and report images "
                    "per class, unreadable/truncated/non-image files, duplicates, too-small images, "
                    "labels without images or images without labels, and the collection's make-up: "
                    "cameras, resolutions, left and right eyes, formats and DICOM compression. Each frame "
                    "of a multi-frame DICOM file is one image. Warns when the folder looks like the wrong "
                    "choice: named like a test set, class folders holding class folders (the parent of the "
                    "right folder), class folders that are not grades or not the classes of --for.",
    )
    inspect.add_argument("data", type=Path, metavar="DATA", help="folder of class folders, labels CSV, or folder")
    inspect.add_argument("--labels-csv", type=Path, metavar="CSV", help="labels CSV (id_code,diagnosis) for DATA")
    inspect.add_argument("--min-size", type=int, default=None, metavar="PX",
                         help="report images smaller than this (the model input; default: that of --for, or 224)")
    inspect.add_argument("--for", dest="target", type=Path, metavar="INVITATION|PLAN.toml|MODEL.dpm",
                         help="check the images against what this federation or model expects: its classes "
                              "(other classes are a warning) and its input size")
    inspect.add_argument("--fundus-crop", action="store_true",
                         help="also look for the retina's disc in every image, as training with the fundus "
                              "crop does, and list the images that would fall back to the plain centre crop")
    inspect.add_argument("--max-frames", type=int, default=None, metavar="N",
                         help=f"most frames a multi-frame DICOM file may hold (default {_max_frames()})")
    inspect.add_argument("--json", action="store_true", help="print only the report as JSON on stdout")
    inspect.set_defaults(func=_inspect)


def _max_frames() -> int:
    from core.data.images import MAX_FRAMES_PER_FILE

    return MAX_FRAMES_PER_FILE


def _demo_data(args: argparse.Namespace) -> int:
    from core.data.synthetic import write_demo_data

    with progress_bar("Drawing synthetic images", enabled=not args.json) as progress:
        summary = write_demo_data(args.out, hospitals=args.hospitals, per_hospital=args.per_hospital,
                                  test_images=args.test_images, size=args.size, seed=args.seed, progress=progress)
    if args.dicom:
        from core.data.dicom_writer import write_dicom_examples

        summary["dicom"] = write_dicom_examples(Path(summary["out"]) / "dicom", size=args.size, seed=args.seed)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"Wrote SYNTHETIC demo data (not real patient data) to {summary['out']}")
    for name, entry in summary["hospitals"].items():
        print(f"  {name}: {entry['images']} images, per grade 0-4: {entry['class_counts']}")
    print(f"  test: {summary['test']['images']} images, per grade 0-4: {summary['test']['class_counts']}")
    if "dicom" in summary:
        print(f"  dicom: {summary['dicom']['files']} DICOM files ({summary['dicom']['images']} images), one per "
              "transfer syntax plus stereo pairs")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from core.data.preprocess import Preprocessing
    from core.data.validation import validate
    from core.errors import ConfigError

    max_frames = _max_frames() if args.max_frames is None else args.max_frames
    if max_frames < 1:
        raise ConfigError(f"--max-frames {max_frames} must be at least 1.")
    classes, size, source = _expected(args.target) if args.target is not None else (None, None, "")
    min_size = args.min_size if args.min_size is not None else (size or 224)
    spec = Preprocessing(size=max(8, min_size), fundus_crop=True) if args.fundus_crop else None
    with progress_bar("Checking images", enabled=not args.json) as progress:
        report = validate(args.data, labels_csv=args.labels_csv, min_size=min_size, preprocessing=spec,
                          max_frames=max_frames, expected_classes=classes, expected_from=source or "the plan",
                          progress=progress)
    print(report.to_json() if args.json else report.to_text())
    return 0


def _expected(path: Path) -> tuple[list[str], int, str]:
    """(classes, input size, how to name it) of a model package, a federation plan or an invitation."""
    from core.errors import ConfigError, DopamineError

    path = Path(path)
    try:
        if path.suffix.lower() == ".dpm":
            from core.models.package import read_package

            card = read_package(path, require_signature=False).card
            return list(card.classes), int(card.preprocessing.get("size", 224)), f"the model {path.name}"
        if path.suffix.lower() == ".toml":
            from core.federation.plan import load_plan

            plan = load_plan(path)
        else:
            from core.federation.invitation import read_invitation

            plan = read_invitation(path).plan
    except DopamineError:
        raise
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--for {path}: cannot be read ({exc}); give an invitation, a plan.toml or a .dpm.") from exc
    return list(plan.classes), int(plan.image_size), f"the plan of {plan.name}"
