"""``--home DIR``: the hospital home every hospital command works in (core.home)."""

from __future__ import annotations

import argparse
from pathlib import Path

from core.home import HospitalHome


def add_home_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", type=Path, metavar="DIR",
                        help="the hospital's home folder: ledger, identity key, audit log, models, federations, "
                             "image cache (default: this user's Dopamine data folder, the one the app uses)")


def home_of(args: argparse.Namespace) -> HospitalHome:
    return HospitalHome.at(getattr(args, "home", None))
