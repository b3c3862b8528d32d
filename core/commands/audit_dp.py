"""``dopamine audit-dp``: measure privacy empirically (canaries on synthetic data, a lower bound on epsilon).

Not ``dopamine audit verify``, which checks the hospital's signed audit LOG of what it sent.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from core.commands.progress import progress_bar


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit-dp",
        help="measure privacy empirically: train on synthetic images with canaries and bound epsilon from below "
             "(not `audit verify`, which checks the signed audit log)",
        description="Train once through Dopamine's own DP code on SYNTHETIC images with canaries (each in with "
                    "probability 1/2) and report a lower bound on epsilon (Steinke, Nasr, Jagielski 2023) beside "
                    "the accountant's epsilon. No patient image, ledger or network is used.",
    )
    parser.add_argument("--mode", choices=["cdp", "fscdp"], default="cdp",
                        help="cdp: local DP-SGD; fscdp: a Dopamine federation of K hospitals in this process, "
                             "the auditor playing the coordinator and one hospital (default: cdp)")
    parser.add_argument("--plan", type=Path, metavar="PLAN_TOML",
                        help="FSCDP: audit a federation plan's settings (sigma, q, rounds, C, delta, K, m, t)")
    parser.add_argument("--noise-multiplier", type=float, help="sigma (default 1)")
    parser.add_argument("--sample-rate", type=float, help="q (default 0.1; local runs use 1 / a whole number)")
    parser.add_argument("--steps", type=int, help="DP-SGD steps, or federation rounds (default 100)")
    parser.add_argument("--max-grad-norm", type=float, help="C (default 1)")
    parser.add_argument("--delta", type=float, help="delta (default 1e-5)")
    parser.add_argument("--accountant", choices=["rdp", "prv"], help="default rdp")
    parser.add_argument("--hospitals", type=int, help="FSCDP: K (default 3)")
    parser.add_argument("--threshold", type=int, help="FSCDP: m (default 3)")
    parser.add_argument("--colluders", type=int, help="FSCDP: t, at least 1 (default 1)")
    parser.add_argument("--canaries", type=int, default=1000, help="white-box gradient canaries (default 1000)")
    parser.add_argument("--input-canaries", type=int, default=100,
                        help="black-box canaries: out-of-distribution images (default 100; 0 for none)")
    parser.add_argument("--images", type=int, default=64, help="synthetic images per hospital (default 64)")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--model", default="small_cnn", help="squeezenet1_1 | resnet18_gn | small_cnn")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, help="synthetic images and canary coins (the DP noise is never seeded)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="write audit.json, audit.html and audit.png here")
    parser.add_argument("--json", action="store_true", help="print the whole result as one JSON object")
    parser.set_defaults(func=_audit_dp)


def _config(args: argparse.Namespace):
    from core.errors import ConfigError
    from core.privacy_audit.audit import AuditConfig

    settings: dict = {}
    if args.plan is not None:
        from core.federation.plan import load_plan

        plan = load_plan(args.plan)
        if plan.mode != "fscdp":
            raise ConfigError(f"{args.plan.name} is a {plan.mode.upper()} plan; the audit runs FSCDP plans only.")
        settings = {"mode": "fscdp", "noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate,
                    "steps": plan.rounds, "max_grad_norm": plan.max_grad_norm, "delta": plan.delta,
                    "accountant": plan.accountant, "hospitals": plan.hospitals, "threshold": plan.threshold,
                    "colluders": plan.colluders, "num_classes": len(plan.classes)}
    else:
        settings["mode"] = args.mode
    for name in ("noise_multiplier", "sample_rate", "steps", "max_grad_norm", "delta", "accountant", "hospitals",
                 "threshold", "colluders"):
        value = getattr(args, name)
        if value is not None:
            settings[name] = value
    config = AuditConfig(**settings, gradient_canaries=args.canaries, input_canaries=args.input_canaries,
                         real_images=args.images, image_size=args.image_size, model=args.model,
                         confidence=args.confidence, seed=args.seed)
    config.validate()
    return config


def _audit_dp(args: argparse.Namespace) -> int:
    from core.privacy_audit.audit import run
    from core.privacy_audit.report import result_json, write_report

    config = _config(args)
    with progress_bar("Privacy audit", enabled=not args.json) as progress:
        result = run(config, progress=progress)
    paths = write_report(result, args.out) if args.out is not None else {}
    if args.json:
        print(result_json(result))
        return 0
    print(result.summary())
    for kind, bound in result.bounds.items():
        print(f"  {kind} canaries: {bound.correct} of {bound.guesses} guesses right ({bound.canaries} canaries, "
              f"{bound.included} in): epsilon >= {bound.epsilon_lower:.3g} "
              f"(this many guesses can show at most {bound.max_epsilon_lower:.3g})")
    print(f"  {result.threat_model}")
    if result.exceeds_claim:
        print("  The measured lower bound is above the accountant's epsilon: the code or the accounting is wrong.")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0
