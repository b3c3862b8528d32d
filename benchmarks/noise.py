"""Cost of DP randomness: core.privacy.noise.DPRandom against the torch generators it replaced.

For each vector length (SqueezeNet 1.1's 725,061 parameters by default) every variant below is
timed in one run, repetitions interleaved (each repetition runs every variant once, in a rotated
order) so that a busy machine hits them alike; reported: the median over repetitions and the ratio
to the old noise (torch_normal_x4, Opacus's secure-mode draw).

Variants:
- keystream: AES-256-CTR bytes for the draw (8 bytes per Gaussian), the cipher alone;
- dp_normal: DPRandom.normal, float64 Gaussians by Box-Muller;
- dp_add_normal: DPRandom.add_normal_ on a float32 vector: draw, add in float64, snap, round to
  float32 (what a DP step costs: FusedDPOptimizer.add_noise and add_gaussian_noise);
- torch_normal: one float32 torch.normal draw from a seeded torch.Generator (not secure);
- torch_normal_x4: four such draws summed and halved (the noise before issue #10).
And the Poisson sample of a hospital's images (DPRandom.poisson_sample).

Goal: noise for 725,061 parameters (dp_add_normal) in a few milliseconds on 2 CPU cores: 5 ms.

Usage: python benchmarks/noise.py [--out benchmarks/results/noise.json] [--quick] [--repeats N]
       [--lengths N ...] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.privacy.noise import DPRandom  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "noise.json"
SQUEEZENET = 725_061
DEFAULT_LENGTHS = (SQUEEZENET, 11_179_077)  # SqueezeNet 1.1 and ResNet-18 (GroupNorm), 5 classes
GOAL = {"variant": "dp_add_normal", "length": SQUEEZENET, "max_ms": 5.0}
POISSON = {"images": 3662, "sample_rate": 0.01}  # APTOS 2019's training set, one hospital
STD = 1.0
VARIANTS = ("keystream", "dp_normal", "dp_add_normal", "torch_normal", "torch_normal_x4")


def variants(length: int) -> dict[str, Callable[[], object]]:
    rng = DPRandom()
    target = torch.zeros(length)
    generator = torch.Generator().manual_seed(0)
    draw = torch.empty(length)

    def keystream() -> None:
        for start in range(0, length, 1 << 20):
            rng._words(min(1 << 20, length - start))

    def torch_normal_x4() -> None:
        for _ in range(4):
            target.add_(draw.normal_(0.0, STD, generator=generator), alpha=0.5)

    return {
        "keystream": keystream,
        "dp_normal": lambda: rng.normal(length, STD),
        "dp_add_normal": lambda: rng.add_normal_(target, STD),
        "torch_normal": lambda: target.add_(draw.normal_(0.0, STD, generator=generator)),
        "torch_normal_x4": torch_normal_x4,
    }


def measure(length: int, repeats: int) -> dict:
    steps = variants(length)
    names = list(steps)
    times: dict[str, list[float]] = {name: [] for name in names}
    for repetition in range(repeats + 1):  # repetition 0 warms up and is not counted
        shift = repetition % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            steps[name]()
            if repetition:
                times[name].append(time.perf_counter() - start)
    old = statistics.median(times["torch_normal_x4"])
    result: dict = {"length": length, "variants": {}}
    for name in names:
        median = statistics.median(times[name])
        result["variants"][name] = {
            "median_ms": median * 1e3,
            "min_ms": min(times[name]) * 1e3,
            "ratio_to_torch_normal_x4": median / old,
            "times_ms": [t * 1e3 for t in times[name]],
        }
    keystream_s = statistics.median(times["keystream"])
    result["keystream_gb_per_s"] = 8 * length / keystream_s / 1e9
    result["load_average_after"] = list(os.getloadavg())
    return result


def measure_poisson(repeats: int) -> dict:
    rng = DPRandom()
    times = []
    for repetition in range(repeats + 1):
        start = time.perf_counter()
        rng.poisson_sample(POISSON["images"], POISSON["sample_rate"])
        if repetition:
            times.append(time.perf_counter() - start)
    return {**POISSON, "median_ms": statistics.median(times) * 1e3, "times_ms": [t * 1e3 for t in times]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="smoke run: SqueezeNet's length only, 3 repetitions")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 30; 3 with --quick)")
    parser.add_argument("--lengths", nargs="+", type=int, default=None, help="vector lengths to noise")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 30)
    lengths = args.lengths or ([SQUEEZENET] if args.quick else list(DEFAULT_LENGTHS))
    results = []
    for length in lengths:
        print(f"{length} parameters ...", file=sys.stderr, flush=True)
        results.append(measure(length, repeats))
    goal = dict(GOAL)
    for entry in results:
        if entry["length"] == GOAL["length"]:
            goal["median_ms"] = entry["variants"][GOAL["variant"]]["median_ms"]
            goal["met"] = goal["median_ms"] <= GOAL["max_ms"]
    report = {
        "benchmark": "noise",
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "load_average": list(os.getloadavg()),
        },
        "versions": {"torch": torch.__version__, "cryptography": _version("cryptography"),
                     "python": platform.python_version()},
        "settings": {"repeats": repeats, "std": STD, "variants": list(VARIANTS)},
        "results": results,
        "poisson_sample": measure_poisson(repeats),
        "goal": goal,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"{'length':>10}  " + "  ".join(f"{name:>16}" for name in VARIANTS) + "  (median ms)")
    for entry in results:
        print(f"{entry['length']:>10}  " + "  ".join(f"{entry['variants'][n]['median_ms']:>16.2f}" for n in VARIANTS))
    if "met" in goal:
        verdict = "met" if goal["met"] else "NOT met"
        print(f"goal {goal['variant']} for {goal['length']} parameters: {goal['median_ms']:.2f} ms "
              f"<= {goal['max_ms']} ms {verdict}")
    print(f"wrote {args.out}")
    return 0


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


if __name__ == "__main__":
    sys.exit(main())
