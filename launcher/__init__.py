"""The launcher: the ``dopamine`` console script and the bundled app's one executable.

It routes to the desktop app, the ``dopamine`` command (core.cli) or a background job of the app, so the
engine (core) never names the app: only this package knows both.

    dopamine                       open the desktop app (also: ``dopamine gui``)
    dopamine privacy --steps ...   any ``dopamine`` command
    dopamine -m core.cli ARGS      the same: code that spawns ``sys.executable -m core.cli`` (the
                                   federation simulator) runs unchanged in a frozen app, where
                                   ``sys.executable`` is this program and not a Python interpreter
    dopamine --dopamine-child-job  a background job of the desktop app (gui.child_jobs)

Before the app's window, launcher.platform_check makes sure the desktop can show it: on Linux, a library
that Qt's X11 plug-in needs and cannot find is named with the line that installs it (Debian/Ubuntu, Fedora).

Two environment variables serve the smoke test and the start-up measurement (see installer/README.md):
DOPAMINE_STARTUP_PROBE=1 prints ``DOPAMINE_WINDOW_SHOWN <unix time> <window title>`` on stdout when the
main window is first painted, and ``DOPAMINE_HEAVY_MODULES <names or ->``: which of torch, opacus and
scipy were already imported by then (none should be); DOPAMINE_SMOKE_EXIT_MS=N quits the app N ms after that, through the
app's own exit path (so a clean exit is part of what the smoke test checks).
"""

from __future__ import annotations

import os
import sys
import time

SMOKE_EXIT_ENV = "DOPAMINE_SMOKE_EXIT_MS"
STARTUP_PROBE_ENV = "DOPAMINE_STARTUP_PROBE"
WINDOW_SHOWN_MARK = "DOPAMINE_WINDOW_SHOWN"
HEAVY_MODULES_MARK = "DOPAMINE_HEAVY_MODULES"
# Imported only after the window is up (start-up time); the probe reports any that were loaded earlier.
HEAVY_MODULES = ("torch", "opacus", "scipy")

# What ``-m MODULE`` may name: the modules the code base launches as child processes.
MODULE_ALIASES = {"core.cli": "cli", "gui.app": "gui", "gui.child_jobs": "child"}


class UsageError(Exception):
    pass


def route(argv: list[str]) -> tuple[str, list[str]]:
    """Which part of the app runs for these arguments: ("gui" | "cli" | "child", remaining arguments)."""
    from gui.child_jobs import FROZEN_FLAG

    if argv[:1] == ["-m"]:
        if len(argv) < 2 or argv[1] not in MODULE_ALIASES:
            named = argv[1] if len(argv) > 1 else "nothing"
            raise UsageError(f"-m {named}: this program runs only -m {', -m '.join(sorted(MODULE_ALIASES))}.")
        return MODULE_ALIASES[argv[1]], argv[2:]
    if argv[:1] == [FROZEN_FLAG]:
        return "child", argv[1:]
    if not argv or argv[0] == "gui":
        return "gui", argv[1:]
    return "cli", argv


def smoke_exit_ms(environ: dict[str, str]) -> int | None:
    value = environ.get(SMOKE_EXIT_ENV, "").strip()
    if not value:
        return None
    try:
        ms = int(value)
    except ValueError:
        raise UsageError(f"{SMOKE_EXIT_ENV}={value!r}: give a whole number of milliseconds.") from None
    if ms < 0:
        raise UsageError(f"{SMOKE_EXIT_ENV}={value!r}: give a number of milliseconds >= 0.")
    return ms


def _watch_main_window(app, *, probe: bool, exit_ms: int | None) -> None:
    """Once the first main window paints: print the start-up mark and/or schedule the quit.

    An application-wide event filter, so the app's own ``main`` builds and shows the window exactly as
    it does for a user; nothing in gui/ needs a test hook.
    """
    from PySide6.QtCore import QEvent, QObject, QTimer
    from PySide6.QtWidgets import QMainWindow

    class FirstPaint(QObject):
        def eventFilter(self, watched, event):  # noqa: N802 -- Qt's name
            if event.type() == QEvent.Type.Paint and isinstance(watched, QMainWindow) and watched.isVisible():
                app.removeEventFilter(self)
                if probe:
                    shown = time.time()
                    loaded = ",".join(name for name in HEAVY_MODULES if name in sys.modules) or "-"
                    print(f"{WINDOW_SHOWN_MARK} {shown:.6f} {watched.windowTitle()}", flush=True)
                    print(f"{HEAVY_MODULES_MARK} {loaded}", flush=True)
                if exit_ms is not None:
                    QTimer.singleShot(exit_ms, app.quit)
            return False

    app.installEventFilter(FirstPaint(app))


def run_gui(args: list[str], environ: dict[str, str]) -> int:
    from launcher.platform_check import problem

    # Before Qt loads its platform plug-in: a missing library is one clear line with the install command,
    # not Qt's abort naming one library and suggesting a reinstall.
    message = problem(environ)
    if message is not None:
        print(message, file=sys.stderr)
        return 1
    import gui.app

    probe = environ.get(STARTUP_PROBE_ENV, "") not in ("", "0")
    exit_ms = smoke_exit_ms(environ)
    if probe or exit_ms is not None:
        from PySide6.QtWidgets import QApplication

        # Created here so the watcher is in place before gui.app.main builds the window; main reuses it.
        app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "dopamine", *args])
        _watch_main_window(app, probe=probe, exit_ms=exit_ms)
    return int(gui.app.main(args))


def main(argv: list[str] | None = None) -> int:
    """Route the arguments (default: the command line's) and run that part; its exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        part, args = route(argv)
        if part == "gui":
            return run_gui(args, dict(os.environ))
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if part == "child":
        from gui.child_jobs import main as child_main

        return int(child_main())
    from core.cli import main as cli_main

    return int(cli_main(args, extra_commands={"gui": "open the desktop app"}))
