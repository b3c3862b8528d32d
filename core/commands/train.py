"""``dopamine train`` and ``dopamine evaluate``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.commands import home as home_option
from core.commands.progress import progress_bar
from core.device import DEFAULT_DEVICE, DEVICE_HELP, DEVICES


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a model on this hospital's images (modes C, CDP)")
    train.add_argument("data", type=Path, help="image folder (one sub-folder per class), APTOS CSV, or DICOM folder")
    train.add_argument("--labels-csv", type=Path, help="CSV with id_code,diagnosis when not beside the images")
    train.add_argument("--mode", choices=["c", "cdp"], default="cdp", help="c: plain SGD; cdp: DP-SGD (default)")
    train.add_argument("--model", default="squeezenet1_1", help="squeezenet1_1 | resnet18_gn | small_cnn")
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--batch-size", type=int, default=32, help="expected batch size B (q = B/N)")
    train.add_argument("--lr", type=float, default=0.05)
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--lr-schedule", choices=["constant", "cosine"], default="cosine")
    train.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd",
                       help="sgd (with momentum) or adam; adam often learns more from few noisy DP steps")
    noise = train.add_mutually_exclusive_group()
    noise.add_argument("--noise-multiplier", type=float, help="sigma")
    noise.add_argument("--target-epsilon", type=float, help="calibrate sigma so epsilon stays at or below this")
    train.add_argument("--max-grad-norm", type=float, default=1.0, help="per-example clipping norm C")
    train.add_argument("--delta", type=float,
                       help="delta (default: the ledger's; a new ledger: 1e-5, or 1/(10N) for small N)")
    train.add_argument("--accountant", choices=["rdp", "prv"], default="rdp")
    train.add_argument("--image-size", type=int, default=224)
    train.add_argument("--fundus-crop", action="store_true",
                       help="crop each photograph to the retina's disc (as found against the dark surround), "
                            "pad to square and resize; recorded in the model card")
    train.add_argument("--local-contrast", action="store_true",
                       help="local-average colour normalisation (4*img - 4*blur + 128); recorded in the card")
    train.add_argument("--val-fraction", type=float, default=0.2)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--threads", type=int, help="CPU threads (default: all)")
    train.add_argument("--device", choices=list(DEVICES), default=DEFAULT_DEVICE, help=DEVICE_HELP)
    train.add_argument("--initial-weights", type=Path, help="safetensors file to start from")
    train.add_argument("--out", type=Path, required=True, help="where to write the signed model (.dpm)")
    home_option.add_home_option(train)
    train.add_argument("--max-epsilon", type=float,
                       help="sets the hospital's privacy cap when its ledger has none yet; otherwise a limit on "
                            "this run (it never raises the cap: use `dopamine ledger set-cap`)")
    train.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    train.set_defaults(func=_train)

    evaluate = subparsers.add_parser("evaluate", help="measure a model package on labelled images")
    evaluate.add_argument("model", type=Path)
    evaluate.add_argument("data", type=Path)
    evaluate.add_argument("--labels-csv", type=Path)
    evaluate.add_argument("--allow-unverified", action="store_true",
                          help="evaluate even if the signature does not verify (results marked unverified)")
    evaluate.add_argument("--require-trusted", action="store_true",
                          help="refuse a model unless its signer is trusted here (this hospital, a coordinator of "
                               "a federation it joined, or a key added with `dopamine trust add`)")
    evaluate.add_argument("--json", action="store_true")
    home_option.add_home_option(evaluate)
    evaluate.set_defaults(func=_evaluate)


def _train(args: argparse.Namespace) -> int:
    from core.training.config import TrainConfig
    from core.training.trainer import run

    config = TrainConfig(
        data=args.data, out=args.out, mode=args.mode, model=args.model, labels_csv=args.labels_csv,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        lr_schedule=args.lr_schedule, optimizer=args.optimizer, noise_multiplier=args.noise_multiplier,
        target_epsilon=args.target_epsilon, max_grad_norm=args.max_grad_norm, delta=args.delta,
        accountant=args.accountant, image_size=args.image_size, val_fraction=args.val_fraction,
        seed=args.seed, home=args.home, max_epsilon=args.max_epsilon, threads=args.threads,
        device=args.device, initial_weights=args.initial_weights, fundus_crop=args.fundus_crop,
        local_contrast=args.local_contrast,
    )
    if args.mode == "cdp" and args.noise_multiplier is None and args.target_epsilon is None:
        config.target_epsilon = 8.0
    with progress_bar("Training", enabled=not args.json) as progress:
        result = run(config, progress=progress)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    m = result.metrics
    print(f"Trained {args.model} (mode {result.mode.upper()}) on {result.train_images} images, "
          f"{result.steps} steps, in {result.seconds:.0f} s")
    if result.epsilon is not None:
        assert result.accountant is not None  # a private run names its accountant
        print(f"Privacy: epsilon = {result.epsilon:.3f} at delta = {result.delta:.2g} ({result.accountant.upper()}; "
              f"sigma = {result.noise_multiplier:.3f}, q = {result.sample_rate:.4f}, C = {result.max_grad_norm})")
        print(f"Hospital ledger: {result.ledger_spent:.3f} spent in total ({result.ledger_path})")
    else:
        print("Privacy: none (mode C trains without differential privacy)")
    for note in result.notes:
        print(f"Note: {note}")
    print(f"Validation ({result.val_images} images): accuracy {m['accuracy']:.3f} "
          f"(majority class {result.majority_baseline:.3f}), quadratic kappa {m['kappa']:.3f}")
    print(f"Model: {result.model_path}")
    print(f"Log:   {result.log_path}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from core.training.evaluate import EvaluateConfig, run

    if args.require_trusted and args.allow_unverified:
        raise ConfigError("--require-trusted and --allow-unverified contradict each other; choose one.")
    config = EvaluateConfig(model=args.model, data=args.data, labels_csv=args.labels_csv,
                            allow_unverified=args.allow_unverified, home=args.home,
                            require_trusted=args.require_trusted)
    with progress_bar("Evaluating", enabled=not args.json) as progress:
        result = run(config, progress=progress)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    m = result["metrics"]
    print(f"Model {result['model_path']}")
    if result["signer_trusted"]:
        print(f"Signature: {result['signer']}.")
    elif result["signature_verified"]:
        print(f"Signature: VALID, UNKNOWN SIGNER {result['signer_fingerprint']}: the card's claims are "
              "unverified (`dopamine trust add` trusts it once its sender confirms the fingerprint).")
    else:
        print("Signature: NOT VERIFIED: the file was changed after signing, or its signature is missing.")
    print(f"{result['images']} images: accuracy {m['accuracy']:.3f} (majority class "
          f"{result['majority_baseline']:.3f}), quadratic kappa {m['kappa']:.3f}")
    recall = ", ".join(f"{c}: {'-' if r is None else f'{r:.2f}'}" for c, r in zip(result["classes"], m["per_class_recall"], strict=True))
    print(f"Recall per class: {recall}")
    print("Confusion matrix (rows true, columns predicted):")
    for row in m["confusion_matrix"]:
        print("  " + " ".join(f"{v:5d}" for v in row))
    return 0
