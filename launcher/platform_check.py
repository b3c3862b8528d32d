"""Can this desktop show Qt's window? Checked before Qt loads its platform plug-in.

When a library of Qt's X11 (xcb) plug-in is missing, Qt aborts with a message that names one library and
suggests reinstalling. This check asks the dynamic linker (``ldd``) which libraries the plug-in cannot find
and prints the one install line that adds all of them, with the package names of Debian/Ubuntu and Fedora.
Libraries bundled with the app (PySide6's own Qt, and what the Linux bundle carries) count as present.
It also says in words when there is no display to show a window on.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

# shared library -> (Debian/Ubuntu package, Fedora package), for what Qt's xcb and wayland plug-ins load.
PACKAGES: dict[str, tuple[str, str]] = {
    "libxcb-cursor.so.0": ("libxcb-cursor0", "xcb-util-cursor"),
    "libxcb-icccm.so.4": ("libxcb-icccm4", "xcb-util-wm"),
    "libxcb-keysyms.so.1": ("libxcb-keysyms1", "xcb-util-keysyms"),
    "libxcb-image.so.0": ("libxcb-image0", "xcb-util-image"),
    "libxcb-render-util.so.0": ("libxcb-render-util0", "xcb-util-renderutil"),
    "libxcb-util.so.1": ("libxcb-util1", "xcb-util"),
    "libxcb-randr.so.0": ("libxcb-randr0", "libxcb"),
    "libxcb-shape.so.0": ("libxcb-shape0", "libxcb"),
    "libxcb-shm.so.0": ("libxcb-shm0", "libxcb"),
    "libxcb-sync.so.1": ("libxcb-sync1", "libxcb"),
    "libxcb-xfixes.so.0": ("libxcb-xfixes0", "libxcb"),
    "libxcb-render.so.0": ("libxcb-render0", "libxcb"),
    "libxcb-xkb.so.1": ("libxcb-xkb1", "libxcb"),
    "libxcb-glx.so.0": ("libxcb-glx0", "libxcb"),
    "libxcb.so.1": ("libxcb1", "libxcb"),
    "libX11-xcb.so.1": ("libx11-xcb1", "libX11-xcb"),
    "libX11.so.6": ("libx11-6", "libX11"),
    "libXau.so.6": ("libxau6", "libXau"),
    "libXdmcp.so.6": ("libxdmcp6", "libXdmcp"),
    "libxkbcommon.so.0": ("libxkbcommon0", "libxkbcommon"),
    "libxkbcommon-x11.so.0": ("libxkbcommon-x11-0", "libxkbcommon-x11"),
    "libwayland-client.so.0": ("libwayland-client0", "libwayland-client"),
    "libwayland-cursor.so.0": ("libwayland-cursor0", "libwayland-cursor"),
    "libGL.so.1": ("libgl1", "libglvnd-glx"),
    "libGLX.so.0": ("libglx0", "libglvnd-glx"),
    "libGLdispatch.so.0": ("libglvnd0", "libglvnd"),
    "libEGL.so.1": ("libegl1", "libglvnd-egl"),
    "libOpenGL.so.0": ("libopengl0", "libglvnd-opengl"),
    "libfontconfig.so.1": ("libfontconfig1", "fontconfig"),
    "libfreetype.so.6": ("libfreetype6", "freetype"),
    "libglib-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libgthread-2.0.so.0": ("libglib2.0-0", "glib2"),
    "libdbus-1.so.3": ("libdbus-1-3", "dbus-libs"),
    "libexpat.so.1": ("libexpat1", "expat"),
    "libpng16.so.16": ("libpng16-16", "libpng"),
    "libz.so.1": ("zlib1g", "zlib"),
}
# What Qt's xcb plug-in needs on a bare system; install.sh and installer/README.md list the same.
XCB_PACKAGES = ("libxcb-cursor0", "libxcb-icccm4", "libxcb-keysyms1", "libxcb-image0", "libxcb-render-util0",
                "libxcb-randr0", "libxcb-shape0", "libxcb-xkb1", "libxkbcommon-x11-0", "libegl1", "libgl1",
                "libfontconfig1", "libdbus-1-3")

_NOT_FOUND = re.compile(r"^\s*(\S+)\s+=>\s+not found", re.MULTILINE)
_PLUGIN_FILES = {"xcb": "libqxcb.so", "wayland": "libqwayland.so"}


def platforms(environ: Mapping[str, str]) -> list[str]:
    """The Qt platform plug-ins Qt will try here, in order ([] when there is nothing to check)."""
    if not sys.platform.startswith("linux"):
        return []
    chosen = environ.get("QT_QPA_PLATFORM", "").strip()
    if chosen:  # "xcb", "wayland;xcb", "offscreen", "xcb:option=value" ...
        names = [part.split(":")[0].strip() for part in chosen.split(";")]
        return [name for name in names if name in _PLUGIN_FILES] if names[0] in _PLUGIN_FILES else []
    if environ.get("WAYLAND_DISPLAY") and environ.get("XDG_SESSION_TYPE", "").lower() == "wayland":
        return ["wayland", "xcb"]
    return ["xcb"]


def plugin_folder() -> Path | None:
    """Qt's platforms plug-in folder, found without importing Qt (in a bundle: inside the bundle)."""
    roots = []
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        roots.append(Path(bundle) / "PySide6")
    spec = importlib.util.find_spec("PySide6")
    if spec is not None and spec.submodule_search_locations:
        roots += [Path(location) for location in spec.submodule_search_locations]
    for root in roots:
        folder = root / "Qt" / "plugins" / "platforms"
        if folder.is_dir():
            return folder
    return None


def missing_libraries(plugin: Path, *, run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                      bundled: list[Path] | None = None) -> list[str] | None:
    """The shared libraries ``plugin`` needs that the dynamic linker cannot find, in ldd's order; None when
    it cannot be told (no ldd). A library present in one of the ``bundled`` folders counts as found."""
    ldd = shutil.which("ldd")
    if ldd is None:
        return None
    try:
        done = run([ldd, str(plugin)], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    folders = bundled if bundled is not None else _bundled_folders(plugin)
    missing: list[str] = []
    for name in _NOT_FOUND.findall(done.stdout or ""):
        if name not in missing and not any((folder / name).exists() for folder in folders):
            missing.append(name)
    return missing


def _bundled_folders(plugin: Path) -> list[Path]:
    folders = [plugin.parent.parent.parent / "lib"]  # PySide6/Qt/lib
    bundle = getattr(sys, "_MEIPASS", None)
    if bundle:
        folders.append(Path(bundle))
    return folders


def install_lines(libraries: list[str]) -> list[str]:
    """The install commands that add ``libraries`` on Debian/Ubuntu and on Fedora."""
    debian = sorted({PACKAGES[name][0] for name in libraries if name in PACKAGES})
    fedora = sorted({PACKAGES[name][1] for name in libraries if name in PACKAGES})
    lines = []
    if debian:
        lines += [f"  Debian/Ubuntu:  sudo apt-get install {' '.join(debian)}",
                  f"  Fedora:         sudo dnf install {' '.join(fedora)}"]
    unknown = [name for name in libraries if name not in PACKAGES]
    if unknown:
        lines.append(f"  and the package that provides {', '.join(unknown)} (ask your IT department)")
    return lines


def problem(environ: Mapping[str, str], *, folder: Path | None = None,
            find_missing: Callable[[Path], list[str] | None] = missing_libraries) -> str | None:
    """What stops the desktop app from opening a window here, in words with the fix; None when nothing does
    (or when it cannot be told: then Qt's own message is the fallback)."""
    wanted = platforms(environ)
    if not wanted:
        return None
    if wanted[0] == "xcb" and not environ.get("DISPLAY") and not environ.get("WAYLAND_DISPLAY"):
        return ("error: there is no display to open the desktop app on (DISPLAY is not set). Start Dopamine "
                "from the desktop session, or use the command line here: dopamine --help")
    folder = folder or plugin_folder()
    if folder is None:
        return None
    reports: dict[str, list[str]] = {}
    for name in wanted:
        plugin = folder / _PLUGIN_FILES[name]
        if not plugin.is_file():
            continue
        missing = find_missing(plugin)
        if missing is None or not missing:
            return None  # this plug-in can load (or it cannot be told): let Qt start
        reports[name] = missing
    if not reports:
        return None
    name, missing = ("xcb", reports["xcb"]) if "xcb" in reports else next(iter(reports.items()))
    words = "X11 (xcb)" if name == "xcb" else "Wayland"
    return "\n".join([
        f"error: the desktop app cannot open its window: Qt's {words} display support needs libraries that "
        f"are not installed: {', '.join(missing)}.",
        "Install them (administrator rights needed), then start Dopamine again:",
        *install_lines(missing),
        "The command line works without them: dopamine --help",
    ])
