"""``dopamine privacy``: a planning calculator for epsilon, or the sigma needed for a target epsilon."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    parser = subparsers.add_parser("privacy", help="privacy planning: epsilon for (q, sigma, T, delta), or sigma for a target")
    parser.add_argument("--sample-rate", type=float, required=True, help="q, the Poisson sampling rate")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--noise-multiplier", type=float, help="sigma")
    group.add_argument("--target-epsilon", type=float, help="print the smallest sigma that stays within this")
    parser.add_argument("--steps", type=int, required=True, help="T, the number of DP-SGD steps")
    parser.add_argument("--delta", type=float, required=True)
    parser.add_argument("--accountant", choices=["rdp", "prv"], default="rdp")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=_privacy)


def _privacy(args: argparse.Namespace) -> int:
    from core.errors import PrivacyError
    from core.privacy.accountant import calibrate_noise_multiplier, compute_epsilon

    if not 0 < args.sample_rate <= 1:
        raise PrivacyError("The sample rate q must be in (0, 1].")
    if args.steps < 1:
        raise PrivacyError("The number of steps must be at least 1.")
    if not 0 < args.delta < 1:
        raise PrivacyError("Delta must be in (0, 1).")
    sigma = args.noise_multiplier
    if sigma is None:
        sigma = calibrate_noise_multiplier(target_epsilon=args.target_epsilon, sample_rate=args.sample_rate,
                                           steps=args.steps, delta=args.delta, accountant=args.accountant)
    elif sigma <= 0:
        raise PrivacyError("The noise multiplier must be positive.")
    epsilon = compute_epsilon(sample_rate=args.sample_rate, noise_multiplier=sigma, steps=args.steps,
                              delta=args.delta, accountant=args.accountant)
    result = {"epsilon": epsilon, "delta": args.delta, "noise_multiplier": sigma,
              "sample_rate": args.sample_rate, "steps": args.steps, "accountant": args.accountant}
    if args.json:
        print(json.dumps(result))
    elif args.target_epsilon is not None:
        print(f"noise multiplier sigma = {sigma:.4f} (gives epsilon = {epsilon:.4f} <= {args.target_epsilon} "
              f"at delta = {args.delta:g}, {args.accountant.upper()})")
    else:
        print(f"epsilon = {epsilon:.4f} at delta = {args.delta:g} "
              f"(q = {args.sample_rate:g}, sigma = {sigma:g}, T = {args.steps}, {args.accountant.upper()})")
    return 0
