"""``make demo``: the main job on embedded defaults, on SYNTHETIC data.

A three-hospital Dopamine (FSCDP) federation on this computer: synthetic fundus images for each
hospital (each with its own hospital home), a coordinator and three hospital clients as separate
processes over loopback HTTPS, one DP-SGD step of the union per round with secure aggregation
(m = 3 of K = 3, t = 1: the epsilon holds against the coordinator together with one hospital), then
the signed global model evaluated on a held-out synthetic test set by hospital 1, which trusts the
coordinator that signed it. Prints where the model is and how to open it.
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
    # Hospital 1's home joined the federation, so it trusts the coordinator that signed the model.
    home = Path(result["hospitals"][0]["home"])
    test_dir = next(workdir.rglob("test"), None)
    if test_dir is not None:
        print(f"\n$ dopamine evaluate {model} {test_dir} --home {home}", flush=True)
        code = cli(["evaluate", str(model), str(test_dir), "--home", str(home)])
        if code:
            return code
    print(f"\nThe signed global model is {model}")
    print(f"  diagnose images offline:  .venv/bin/dopamine predict {model} IMAGE_OR_FOLDER --home {home} "
          "--report report.html")
    print("  open it in the app:       .venv/bin/dopamine gui   (Viewer page, 'Open model...')")
    return 0


if __name__ == "__main__":
    sys.exit(main())
