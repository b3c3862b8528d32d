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
    "core.commands.audit_dp",
    "core.commands.compare",
)


def build_parser(extra_commands: dict[str, str] | None = None) -> argparse.ArgumentParser:
    """The parser; ``extra_commands`` (name -> help) lists commands the launcher runs itself (the app)."""
    parser = argparse.ArgumentParser(
        prog="dopamine",
        description="Differentially private federated learning for hospitals (Dopamine method).",
    )
    parser.add_argument("--version", action="version", version=f"dopamine {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    for name, text in (extra_commands or {}).items():
        subparsers.add_parser(name, help=text).set_defaults(func=_run_by_the_launcher)
    return parser


def _run_by_the_launcher(args: argparse.Namespace) -> int:
    raise DopamineError(f"`dopamine {args.command}` is started by the dopamine program itself; run it as "
                        f"`dopamine {args.command}`, not through python -m core.cli.")


def main(argv: list[str] | None = None, *, extra_commands: dict[str, str] | None = None) -> int:
    parser = build_parser(extra_commands)
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
    except OSError as exc:
        # A full disk, a read-only folder or a refused permission in a command that does not say so itself.
        from core.config import storage_error

        error = storage_error(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
