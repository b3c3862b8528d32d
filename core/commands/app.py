"""``dopamine gui``: open the desktop app.

The GUI is imported by name at run time so that ``core`` never imports Qt (a test enforces it) and
the CLI keeps working where PySide6 is not installed.
"""

from __future__ import annotations

import argparse
import importlib

from core.errors import DopamineError


def register(subparsers) -> None:
    gui = subparsers.add_parser("gui", help="open the desktop app")
    gui.set_defaults(func=_gui)


def _gui(args: argparse.Namespace) -> int:
    try:
        app = importlib.import_module("gui.app")
    except ImportError as exc:
        raise DopamineError(
            f"The desktop app cannot start ({exc}); install the full package with "
            "`pip install dopamine-desktop` or use the command line."
        ) from exc
    return int(app.main([]))
