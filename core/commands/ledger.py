"""``dopamine ledger show|export|set-cap``: the hospital's one privacy ledger, in its home folder."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from core.commands.home import add_home_option, home_of


def _epsilon_or_none(text: str) -> float | None:
    if text.strip().lower() in ("none", "off"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an epsilon; give a positive number, or 'none'") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError("the cap must be a positive, finite epsilon (or 'none' to remove it)")
    return value


def register(subparsers) -> None:
    ledger = subparsers.add_parser("ledger", help="the hospital's privacy ledger: what was spent, the cap")
    sub = ledger.add_subparsers(dest="ledger_command", metavar="COMMAND", required=True)

    show = sub.add_parser("show", help="cap, delta, accountant, epsilon spent and every charge")
    add_home_option(show)
    show.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    show.set_defaults(func=_show)

    export = sub.add_parser("export", help="write every charge to a CSV or JSON file")
    add_home_option(export)
    target = export.add_mutually_exclusive_group(required=True)
    target.add_argument("--csv", type=Path, metavar="OUT", help="write a CSV file")
    target.add_argument("--json", type=Path, metavar="OUT", help="write a JSON file")
    export.set_defaults(func=_export)

    set_cap = sub.add_parser("set-cap", help="set the most epsilon this hospital allows in total (recorded in "
                                             "the signed audit log)")
    set_cap.add_argument("epsilon", type=_epsilon_or_none, help="the cap, or 'none' to remove it")
    set_cap.add_argument("--delta", type=float, help="the delta every epsilon is stated at (below 1/N)")
    set_cap.add_argument("--accountant", choices=["rdp", "prv"], help="the accountant that composes the charges")
    add_home_option(set_cap)
    set_cap.set_defaults(func=_set_cap)


def ledger_summary(home) -> dict:
    """What ``ledger show`` prints; reading never creates a ledger."""
    from core.errors import LedgerError
    from core.privacy.ledger import PrivacyLedger

    path = home.ledger
    if not path.exists():
        return {"ledger": str(path), "exists": False, "max_epsilon": None, "delta": None, "accountant": None,
                "epsilon_spent": 0.0, "charges": [], "behind_audit_log": None}
    from dataclasses import asdict

    from core.audit import check_ledger_not_behind

    with PrivacyLedger(path) as ledger:
        behind = None
        try:
            check_ledger_not_behind(ledger, home.audit_log)
        except LedgerError as exc:
            behind = str(exc)
        return {
            "ledger": str(path), "exists": True, "max_epsilon": ledger.max_epsilon, "delta": ledger.delta,
            "accountant": ledger.accountant,
            "epsilon_spent": ledger.spent() if ledger.delta is not None else 0.0,
            "charges": [asdict(entry) for entry in ledger.entries()], "behind_audit_log": behind,
        }


def _show(args: argparse.Namespace) -> int:
    summary = ledger_summary(home_of(args))
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if not summary["exists"]:
        print(f"No privacy ledger yet at {summary['ledger']}: nothing private has run from this home.")
        return 0
    cap = "none" if summary["max_epsilon"] is None else f"{summary['max_epsilon']:g}"
    delta = "not set" if summary["delta"] is None else f"{summary['delta']:g}"
    print(f"Ledger:     {summary['ledger']}")
    print(f"Spent:      epsilon = {summary['epsilon_spent']:.4g} (cap {cap}) at delta = {delta}, "
          f"{summary['accountant'].upper()} accountant")
    print(f"Charges:    {len(summary['charges'])}")
    for charge in summary["charges"]:
        print(f"  {charge['time'][:19].replace('T', ' ')}  sigma={charge['noise_multiplier']:.4g} "
              f"q={charge['sample_rate']:.4g} steps={charge['steps']}  epsilon after {charge['epsilon_after']:.4g}"
              f"  {charge['description']}")
    if summary["behind_audit_log"]:
        print(f"WARNING: {summary['behind_audit_log']}")
        return 1
    return 0


def _export(args: argparse.Namespace) -> int:
    from core.errors import LedgerError
    from core.privacy.ledger import PrivacyLedger

    home = home_of(args)
    if not home.ledger.exists():
        raise LedgerError(f"No privacy ledger at {home.ledger}; nothing to export (check --home).")
    with PrivacyLedger(home.ledger) as ledger:
        if args.csv is not None:
            ledger.export_csv(args.csv)
            out = args.csv
        else:
            ledger.export_json(args.json)
            out = args.json
    print(f"Exported {home.ledger} to {out}")
    return 0


def _set_cap(args: argparse.Namespace) -> int:
    from core.budget import change_cap

    change = change_cap(home_of(args), args.epsilon, delta=args.delta, accountant=args.accountant,
                        source="dopamine ledger set-cap")
    print(change.message())
    return 0
