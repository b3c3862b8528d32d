"""How many of the image-bearing DICOM files that pydicom ships as its test data Dopamine decodes.

Image-bearing: Rows and Columns of at least 32 pixels and pixel data. Every frame of a multi-frame file
must decode for the file to count. The files are pydicom's own (the pinned wheel ships about 190; the
pydicom-data package, where installed, adds the rest). Before/after in one run, with an export of an older
commit:

    git archive HEAD | tar -x -C /tmp/head
    .venv/bin/python benchmarks/dicom_testfiles.py --before /tmp/head --out benchmarks/results/dicom_testfiles.json
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import warnings
from pathlib import Path


def image_bearing_files() -> list[Path]:
    import pydicom
    import pydicom.data

    found = []
    for name in sorted(pydicom.data.get_testdata_files()):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                header = pydicom.dcmread(name, stop_before_pixels=True, force=True)
                full = pydicom.dcmread(name, force=True)
        except Exception:  # noqa: BLE001 - deliberately broken test files have no image to count
            continue
        if "Rows" not in header or "Columns" not in header:
            continue
        if "PixelData" not in full and "FloatPixelData" not in full and "DoubleFloatPixelData" not in full:
            continue
        try:
            if int(header.Rows) >= 32 and int(header.Columns) >= 32:
                found.append(Path(name))
        except (TypeError, ValueError):
            continue
    return found


def decode_all(path: Path) -> tuple[bool, int, str]:
    """(decoded, frames decoded, reason) with whichever decoding API the checkout under test has."""
    from core.data import images

    try:
        if hasattr(images, "load_frames"):
            frames = images.load_frames(path)
            return True, len(frames), ""
        images.load_image(path)
        return True, 1, ""
    except Exception as exc:  # noqa: BLE001 - the reason is the result
        return False, 0, str(exc)


def measure(root: Path) -> dict:
    """Decode every image-bearing test file with the checkout at ``root`` (in this process)."""
    sys.path.insert(0, str(root.resolve()))
    files = image_bearing_files()
    results = []
    for path in files:
        ok, frames, reason = decode_all(path)
        results.append({"file": path.name, "decoded": ok, "frames": frames, "reason": reason[:300]})
    failed = [r for r in results if not r["decoded"]]
    return {
        "image_bearing_files": len(results),
        "decoded": len(results) - len(failed),
        "frames_decoded": sum(r["frames"] for r in results),
        "failure_reasons": collections.Counter(_short(r["reason"]) for r in failed).most_common(),
        "files": results,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="checkout whose core/ is measured (default: this one)")
    parser.add_argument("--before", type=Path,
                        help="an older checkout (e.g. `git archive HEAD | tar -x -C DIR`) measured too, in a child "
                             "process, for a before/after comparison in one run")
    parser.add_argument("--out", type=Path, help="JSON file to write")
    parser.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from importlib import metadata

    import pydicom

    summary: dict = {"pydicom": pydicom.__version__, "plugins": {}}
    for name in ("pylibjpeg", "pylibjpeg-libjpeg", "pylibjpeg-openjpeg", "pylibjpeg-rle", "pyjpegls",
                 "pydicom-data"):
        try:
            summary["plugins"][name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    if args.before is not None:
        import subprocess

        done = subprocess.run([sys.executable, __file__, "--root", str(args.before), "--quiet"], check=True,
                              capture_output=True, text=True)
        summary["before"] = json.loads(done.stdout)
    summary["after"] = measure(args.root)
    if args.quiet:
        print(json.dumps(summary["after"]))
        return
    text = json.dumps(summary, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    for label in ("before", "after"):
        if label in summary:
            part = summary[label]
            print(f"{label}: {part['decoded']} of {part['image_bearing_files']} files decode "
                  f"({part['frames_decoded']} frames); failures: {part['failure_reasons']}")
            for r in part["files"]:
                if not r["decoded"] and label == "after":
                    print(f"  {r['file']}: {r['reason'][:160]}")


def _short(reason: str) -> str:
    """The kind of failure without the file name and the decoder's details."""
    text = reason.split(": ", 1)[-1]
    return text.split(" (")[0]


if __name__ == "__main__":
    main()
