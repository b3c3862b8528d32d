"""The platform check before Qt loads: missing X11 libraries are named with the line that installs them."""

from __future__ import annotations

import ctypes
import subprocess
from pathlib import Path

import launcher
from launcher import platform_check as check

LDD_OUTPUT = """\
\tlibQt6XcbQpa.so.6 => /opt/x/PySide6/Qt/lib/libQt6XcbQpa.so.6 (0x00007f)
\tlibxcb-icccm.so.4 => not found
\tlibxcb-keysyms.so.1 => not found
\tlibxcb-cursor.so.0 => /lib/x86_64-linux-gnu/libxcb-cursor.so.0 (0x00007f)
\tlibxcb-icccm.so.4 => not found
\tlibbundled.so.1 => not found
\tlibstrange.so.2 => not found
"""


def _fake_ldd(_command, **_kwargs):
    return subprocess.CompletedProcess(_command, 0, stdout=LDD_OUTPUT, stderr="")


def test_missing_libraries_come_from_ldd_once_each_and_bundled_ones_count(tmp_path, monkeypatch):
    monkeypatch.setattr(check.shutil, "which", lambda name: "/usr/bin/ldd")
    (tmp_path / "libbundled.so.1").write_bytes(b"")
    missing = check.missing_libraries(tmp_path / "libqxcb.so", run=_fake_ldd, bundled=[tmp_path])
    assert missing == ["libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libstrange.so.2"]
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    assert check.missing_libraries(tmp_path / "libqxcb.so", run=_fake_ldd) is None  # cannot tell: let Qt try


def test_the_message_names_every_library_and_the_install_lines(tmp_path):
    (tmp_path / "libqxcb.so").write_bytes(b"")
    message = check.problem({"DISPLAY": ":0"}, folder=tmp_path,
                            find_missing=lambda _p: ["libxcb-icccm.so.4", "libxcb-keysyms.so.1", "libstrange.so.2"])
    assert message.startswith("error: the desktop app cannot open its window")
    assert "libxcb-icccm.so.4, libxcb-keysyms.so.1, libstrange.so.2" in message
    assert "Debian/Ubuntu:  sudo apt-get install libxcb-icccm4 libxcb-keysyms1" in message
    assert "Fedora:         sudo dnf install xcb-util-keysyms xcb-util-wm" in message
    assert "libstrange.so.2 (ask your IT department)" in message and "Reinstalling" not in message
    assert check.problem({"DISPLAY": ":0"}, folder=tmp_path, find_missing=lambda _p: []) is None


def test_no_display_and_other_platforms(tmp_path):
    assert "no display" in check.problem({}, folder=tmp_path, find_missing=lambda _p: [])
    assert check.platforms({"QT_QPA_PLATFORM": "offscreen"}) == []
    assert check.platforms({"QT_QPA_PLATFORM": "xcb:nograb"}) == ["xcb"]
    assert check.platforms({"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}) == ["wayland", "xcb"]
    # In a Wayland session a working Wayland plug-in is enough, whatever X11 lacks.
    for name in ("libqwayland.so", "libqxcb.so"):
        (tmp_path / name).write_bytes(b"")
    wayland = {"WAYLAND_DISPLAY": "wayland-0", "XDG_SESSION_TYPE": "wayland"}
    assert check.problem(wayland, folder=tmp_path,
                         find_missing=lambda p: [] if "wayland" in p.name else ["libxcb-icccm.so.4"]) is None


def test_dopamine_gui_prints_the_problem_and_exits_1_before_qt(monkeypatch, capsys):
    monkeypatch.setattr(check, "problem", lambda environ: "error: the desktop app cannot open its window: x")
    assert launcher.main(["gui"]) == 1
    assert capsys.readouterr().err == "error: the desktop app cannot open its window: x\n"


def test_the_real_plugin_check_agrees_with_the_dynamic_linker():
    """On this computer: every library the check calls missing really cannot be loaded, and the libraries
    the X11 plug-in needs are named with a package (the table is complete for what Qt's xcb plug-in loads)."""
    folder = check.plugin_folder()
    assert folder is not None and (folder / "libqxcb.so").is_file()
    missing = check.missing_libraries(folder / "libqxcb.so")
    assert missing is not None
    for name in missing:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        raise AssertionError(f"{name} loads, but the check calls it missing")
    needed = subprocess.run(["ldd", str(folder / "libqxcb.so")], capture_output=True, text=True).stdout
    system = {line.split()[0] for line in needed.splitlines()
              if "=>" in line and "/PySide6/" not in line and "libxcb" in line}
    assert system <= set(check.PACKAGES), system - set(check.PACKAGES)
    packages = subprocess.run([str(Path(__file__).parents[2] / "installer" / "system_packages.sh"), "--list"],
                              capture_output=True, text=True).stdout.split()
    assert set(check.XCB_PACKAGES) <= set(packages)
