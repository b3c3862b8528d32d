"""The ``dopamine`` command. Subcommands live in ``core/commands/<area>.py``.

Each command module exposes ``register(subparsers)``, which adds its parsers and sets
``func=handler`` on them; a handler takes the parsed ``argparse.Namespace`` and returns an exit code.
Errors a user can fix (DopamineError) print one line and exit 1; bad arguments exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from core import __version__
from core.errors import Cancelled, DopamineError

COMMAND_MODULES = (
    "core.commands.data",
    "core.commands.train",
    "core.commands.privacy",
    "core.commands.ledger",
    "core.commands.predict",
    "core.commands.trust",
    "core.commands.federation",
    "core.commands.app",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dopamine",
        description="Differentially private federated learning for hospitals (Dopamine method).",
    )
    parser.add_argument("--version", action="version", version=f"dopamine {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:  # an area not built yet
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except Cancelled:
        print("Cancelled.", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (e.g. `dopamine inspect DATA | head`): stop quietly, like other tools.
        sys.stderr.close()
        return 141
    except DopamineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
