"""``make demo``: the main job on embedded defaults, on SYNTHETIC data.

A three-hospital Dopamine (FSCDP) federation on this computer: synthetic fundus images for each
hospital, a coordinator and three hospital clients as separate processes over loopback HTTPS, one
DP-SGD step of the union per round with secure aggregation, then the signed global model evaluated
on a held-out synthetic test set. Prints where the model is and how to open it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from core.cli import main as cli

OUT = Path("demo-output")


def main() -> int:
    if OUT.exists():
        shutil.rmtree(OUT)  # the demo always starts from scratch; it only ever writes here
    workdir = OUT / "federation"
    summary = OUT / "simulation.json"
    argv = ["simulate", "--hospitals", "3", "--mode", "fscdp", "--workdir", str(workdir), "--json", str(summary)]
    print(f"$ dopamine {' '.join(argv)}", flush=True)
    code = cli(argv)
    if code:
        return code
    result = json.loads(summary.read_text())
    model = Path(result["model_path"]).resolve()
    test_dir = next(workdir.rglob("test"), None)
    if test_dir is not None:
        print(f"\n$ dopamine evaluate {model} {test_dir}", flush=True)
        code = cli(["evaluate", str(model), str(test_dir)])
        if code:
            return code
    print(f"\nThe signed global model is {model}")
    print(f"  diagnose images offline:  .venv/bin/dopamine predict {model} IMAGE_OR_FOLDER --report report.html")
    print("  open it in the app:       .venv/bin/dopamine gui   (Viewer page, 'Open model...')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
