"""The privacy audit (core.privacy_audit) on the demo's settings: epsilon_lower beside the accountant's
epsilon for local DP-SGD (CDP) and a Dopamine federation (FSCDP, K = 3, m = 3, t = 1), sigma in
{0, 0.5, 1, 2}, and the power checks, with the time each audit takes.

Settings (the three-hospital demo's, core/federation/simulate.py): q = 0.3 (local: 1/3, the nearest
rate train_local can run), 160 steps or rounds, C = 1, delta = 1e-4, RDP; 1000 gradient (Dirac) and 100
input canaries, 64 synthetic images per hospital at 32 px, small_cnn. Every row is one audit at 95%
confidence; "sound" checks epsilon_lower <= epsilon at the confidence corrected for the number of
noised configurations (Bonferroni), as the issue asks.

Power checks: the broken mechanism runs sigma/4 while the accountant is told sigma = 3 (q = 1, one
step: claimed epsilon 1.39 at delta 1e-5, RDP) with 2000 gradient canaries.

Usage: python benchmarks/privacy_audit.py [--out benchmarks/results/privacy_audit.json] [--quick]
       [--threads N]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.privacy_audit.audit import AuditConfig, run  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "privacy_audit.json"
SIGMAS = (0.0, 0.5, 1.0, 2.0)
DEMO = {"sample_rate": 0.3, "steps": 160, "max_grad_norm": 1.0, "delta": 1e-4, "accountant": "rdp",
        "gradient_canaries": 1000, "input_canaries": 100, "real_images": 64, "image_size": 32,
        "hospitals": 3, "threshold": 3, "colluders": 1}
QUICK = {**DEMO, "steps": 5, "gradient_canaries": 100, "input_canaries": 20, "real_images": 8, "image_size": 16}
BROKEN = {"noise_multiplier": 3.0, "sample_rate": 1.0, "steps": 1, "delta": 1e-5, "gradient_canaries": 2000,
          "input_canaries": 0, "real_images": 8, "image_size": 16, "broken_noise_factor": 0.25}


def audit(settings: dict) -> dict:
    started = time.perf_counter()
    result = run(AuditConfig(**settings))
    seconds = time.perf_counter() - started
    row = {key: settings.get(key) for key in ("mode", "noise_multiplier", "broken_noise_factor")}
    row.update({
        "sample_rate": result.sample_rate, "steps": result.steps,
        "epsilon": None if math.isinf(result.epsilon) else result.epsilon,
        "epsilon_lower": result.epsilon_lower, "tightness": result.tightness,
        "bounds": {kind: bound.to_dict() for kind, bound in result.bounds.items()},
        "seconds": seconds,
    })
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 steps, 100 canaries, sigma 0 and 1")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    base = QUICK if args.quick else DEMO
    sigmas = (0.0, 1.0) if args.quick else SIGMAS
    rows = []
    for mode in ("cdp", "fscdp"):
        for sigma in sigmas:
            print(f"{mode} sigma={sigma:g} ...", file=sys.stderr, flush=True)
            rows.append(audit({**base, "mode": mode, "noise_multiplier": sigma}))
    broken = [audit({**BROKEN, "mode": mode}) for mode in (("cdp",) if args.quick else ("cdp", "fscdp"))]
    noised = [row for row in rows if row["epsilon"] is not None]
    corrected = 1 - 0.05 / max(1, len(noised))
    for row in noised:
        # The reported bounds are at 95%; "sound" re-checks each at the corrected level via its counts.
        from core.privacy_audit.bound import epsilon_lower

        significance = (1 - corrected) / len(row["bounds"])
        strict = max(epsilon_lower(b["canaries"], b["guesses"], b["correct"], delta=b["delta"],
                                   significance=significance / b["candidates"]) for b in row["bounds"].values())
        row["epsilon_lower_corrected"] = strict
        row["sound"] = strict <= row["epsilon"]
    zero = [row for row in rows if row["noise_multiplier"] == 0.0]
    power = {
        "sigma_0_reaches_90_percent_of_cap": all(
            row["bounds"]["gradient"]["epsilon_lower"] >= 0.9 * row["bounds"]["gradient"]["max_epsilon_lower"]
            for row in zero),
        "broken_mechanism_detected": all(row["epsilon_lower"] > row["epsilon"] for row in broken),
        "real_sigma_sound_at_corrected_confidence": all(row["sound"] for row in noised),
        "corrected_confidence": corrected,
    }
    report = {
        "benchmark": "privacy_audit",
        "quick": args.quick,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "load_average": list(os.getloadavg())},
        "settings": {"grid": base, "sigmas": list(sigmas), "broken": BROKEN, "confidence": 0.95},
        "results": rows,
        "broken_mechanism": broken,
        "power_checks": power,
        "best_tightness": max((row["tightness"] for row in noised), default=0.0),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'mode':>6} {'sigma':>6} {'q':>6} {'T':>5} {'epsilon':>9} {'eps_lower':>9} {'ratio':>6} {'seconds':>8}")
    for row in rows + broken:
        epsilon = "inf" if row["epsilon"] is None else f"{row['epsilon']:.3g}"
        label = f"{row['noise_multiplier']:g}" + ("/4" if row["broken_noise_factor"] == 0.25 else "")
        print(f"{row['mode']:>6} {label:>6} {row['sample_rate']:>6.3g} {row['steps']:>5} {epsilon:>9} "
              f"{row['epsilon_lower']:>9.3g} {row['tightness']:>6.2f} {row['seconds']:>8.1f}")
    print(f"power checks: {power}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
