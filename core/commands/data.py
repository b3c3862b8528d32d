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
    demo.add_argument("--json", action="store_true", help="print only a JSON summary on stdout")
    demo.set_defaults(func=_demo_data)

    inspect = subparsers.add_parser(
        "inspect",
        help="check an image collection before training (validation report)",
        description="Open every image of a collection (class folders, APTOS CSV or DICOM) and report images "
                    "per class, unreadable/truncated/non-image files, duplicates, too-small images and "
                    "labels without images or images without labels.",
    )
    inspect.add_argument("data", type=Path, metavar="DATA", help="folder of class folders, labels CSV, or folder")
    inspect.add_argument("--labels-csv", type=Path, metavar="CSV", help="labels CSV (id_code,diagnosis) for DATA")
    inspect.add_argument("--min-size", type=int, default=224, metavar="PX",
                         help="report images smaller than this (the model input, default 224)")
    inspect.add_argument("--json", action="store_true", help="print only the report as JSON on stdout")
    inspect.set_defaults(func=_inspect)


def _demo_data(args: argparse.Namespace) -> int:
    from core.data.synthetic import write_demo_data

    with progress_bar("Drawing synthetic images", enabled=not args.json) as progress:
        summary = write_demo_data(args.out, hospitals=args.hospitals, per_hospital=args.per_hospital,
                                  test_images=args.test_images, size=args.size, seed=args.seed, progress=progress)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"Wrote SYNTHETIC demo data (not real patient data) to {summary['out']}")
    for name, entry in summary["hospitals"].items():
        print(f"  {name}: {entry['images']} images, per grade 0-4: {entry['class_counts']}")
    print(f"  test: {summary['test']['images']} images, per grade 0-4: {summary['test']['class_counts']}")
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from core.data.validation import validate

    with progress_bar("Checking images", enabled=not args.json) as progress:
        report = validate(args.data, labels_csv=args.labels_csv, min_size=args.min_size, progress=progress)
    print(report.to_json() if args.json else report.to_text())
    return 0
