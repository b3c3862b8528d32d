"""``dopamine compare``: C, CDP, F, FPDP and FSCDP on one collection, accuracy against epsilon."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.commands.progress import progress_bar
from core.device import DEFAULT_DEVICE, DEVICE_HELP, DEVICES


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="compare the five training modes on a collection split into virtual hospitals (accuracy vs epsilon)",
        description="Split a labelled collection (default: synthetic fundus images) into K virtual hospitals and a "
                    "test set, train every mode through the product's own code (FSCDP through the real secure "
                    "aggregation, in one process), and write results.json, figure.png and report.html. Run it "
                    "again with the same settings to resume; more --seeds adds runs.",
    )
    parser.add_argument("data", nargs="?", type=Path, metavar="DATA",
                        help="a labelled collection: class folders, a labels CSV, or one folder per hospital beside "
                             "a test folder (default: synthetic images drawn into OUT/data)")
    parser.add_argument("--labels-csv", type=Path, help="labels for DATA (id_code,diagnosis)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="where results and the report go")
    parser.add_argument("--hospitals", type=int, default=10, metavar="K", help="virtual hospitals (default 10)")
    parser.add_argument("--modes", default="c,cdp,f,fpdp,fscdp", help="comma-separated (default: all five)")
    parser.add_argument("--seeds", type=int, default=5, help="runs per mode (default 5)")
    parser.add_argument("--split", default="iid",
                        help="iid (default, as in the paper), dirichlet:ALPHA (label skew) or folders (DATA's own "
                             "hospital folders and its test folder)")
    parser.add_argument("--model", default="small_cnn", help="squeezenet1_1 | resnet18_gn | small_cnn (default)")
    parser.add_argument("--image-size", type=int, default=32, metavar="PX", help="default 32")
    parser.add_argument("--noise-multiplier", type=float, default=1.0,
                        help="sigma of every DP mode (default 1), unless --target-epsilon")
    parser.add_argument("--target-epsilon", type=float, metavar="E",
                        help="calibrate sigma per DP mode so each reaches this epsilon (equal privacy)")
    parser.add_argument("--delta", type=float, default=1e-4, help="default 1e-4, as in the paper")
    parser.add_argument("--accountant", choices=["rdp", "prv"], default="rdp")
    parser.add_argument("--epochs", type=int, default=15, help="C and CDP; FSCDP takes as many rounds as CDP steps")
    parser.add_argument("--rounds", type=int, default=15, help="F and FPDP rounds (default 15)")
    parser.add_argument("--local-epochs", type=int, default=5, help="F and FPDP (default 5, as in the paper)")
    parser.add_argument("--fraction", type=float, default=0.5,
                        help="F and FPDP: the share of hospitals training each round (default 0.5)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="C and CDP (default 128); FSCDP samples the union at the same rate")
    parser.add_argument("--local-batch-size", type=int, default=32, help="F and FPDP, at each hospital (default 32)")
    parser.add_argument("--no-lr-search", action="store_true",
                        help="skip the learning-rate search (each mode's middle candidate)")
    parser.add_argument("--synthetic-images", type=int, default=1500, help="without DATA (default 1500)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run (under a minute on 2 cores): 400 synthetic images, at most 4 hospitals, "
                             "one seed, short training")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", choices=list(DEVICES), default=DEFAULT_DEVICE, help=DEVICE_HELP)
    parser.set_defaults(func=_compare)


def _compare(args: argparse.Namespace) -> int:
    from core.compare.config import CompareConfig
    from core.compare.report import table_rows
    from core.compare.run import run

    config = CompareConfig(
        out=args.out, data=args.data, labels_csv=args.labels_csv, hospitals=args.hospitals,
        modes=tuple(m.strip().lower() for m in args.modes.split(",") if m.strip()), seeds=args.seeds,
        split=args.split, model=args.model, image_size=args.image_size, noise_multiplier=args.noise_multiplier,
        target_epsilon=args.target_epsilon, delta=args.delta, accountant=args.accountant, epochs=args.epochs,
        rounds=args.rounds, local_epochs=args.local_epochs, fraction=args.fraction,
        batch_size=args.batch_size, local_batch_size=args.local_batch_size,
        lr_search=not args.no_lr_search, synthetic_images=args.synthetic_images, quick=args.quick,
        threads=args.threads, device=args.device)
    with progress_bar("Comparing modes") as progress:
        result = run(config, progress=progress)
    print(f"{'mode':6} {'accuracy':>15} {'quadratic kappa':>17} {'epsilon':>8} {'sigma':>6}")
    for row in table_rows(result.results):
        print(f"{row['mode']:6} {row['accuracy']:>15} {row['kappa']:>17} {row['epsilon']:>8} {row['sigma']:>6}")
    delta, accountant = result.results["config"]["delta"], result.results["config"]["accountant"].upper()
    print(f"epsilon at delta = {delta:g} ({accountant}); the learning-rate search is not covered by it.")
    for name, path in result.paths.items():
        print(f"  {name}: {path}")
    return 0
