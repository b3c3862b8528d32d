"""``make demo``: the main job on embedded defaults, on synthetic data.

Writes synthetic data for three hospitals, inspects one, trains it with DP-SGD (mode CDP), evaluates the
signed model on the held-out synthetic test set and prints where the model is.
"""

from __future__ import annotations

import sys
from pathlib import Path

from core.cli import main as cli

OUT = Path("demo-output")


def main() -> int:
    data = OUT / "data"
    steps = [
        ["demo-data", str(data), "--hospitals", "3", "--per-hospital", "300", "--size", "128", "--seed", "7"],
        ["inspect", str(data / "hospital_01"), "--min-size", "64"],
        ["train", str(data / "hospital_01"), "--mode", "cdp", "--model", "small_cnn", "--image-size", "64",
         "--epochs", "8", "--batch-size", "32", "--lr", "0.1", "--target-epsilon", "8", "--delta", "1e-4",
         "--ledger", str(OUT / "privacy-ledger.sqlite"), "--max-epsilon", "20",
         "--out", str(OUT / "hospital_01-cdp.dpm")],
        ["evaluate", str(OUT / "hospital_01-cdp.dpm"), str(data / "test")],
    ]
    for argv in steps:
        print(f"\n$ dopamine {' '.join(argv)}", flush=True)
        code = cli(argv)
        if code:
            return code
    print(f"\nThe signed model is {(OUT / 'hospital_01-cdp.dpm').resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
