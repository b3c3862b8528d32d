"""Icons, the Linux archive and the resource-path helper the bundle relies on."""

import configparser
import importlib.util
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from gui import resources

ROOT = Path(__file__).resolve().parents[2]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"installer_{name}", ROOT / "installer" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_icons = load("make_icons")
make_tar = load("make_tar")


def test_icons_for_every_platform(tmp_path):
    paths = make_icons.write_icons(tmp_path / "icons")
    with Image.open(paths["png"]) as png:
        assert png.size == (512, 512) and png.mode == "RGBA"
        assert png.getpixel((0, 0))[3] == 0  # transparent corner outside the rounded square
        assert png.getpixel((256, 40))[:3] == (0x1F, 0x6F, 0xEB)  # the icon's blue, drawn
    with Image.open(paths["ico"]) as ico:
        assert {(16, 16), (32, 32), (48, 48), (256, 256)} <= set(ico.info["sizes"])
    with Image.open(paths["icns"]) as icns:
        assert icns.format == "ICNS" and icns.size[0] >= 512


def test_resources_found_from_source():
    folder = resources.resources_dir()
    assert folder == ROOT / "resources"
    assert (folder / "icons" / "app.svg").is_file()
    assert resources.read_text("styles", "base.qss").strip()


def test_resources_found_in_a_bundle(tmp_path, monkeypatch):
    (tmp_path / "resources" / "styles").mkdir(parents=True)
    (tmp_path / "resources" / "styles" / "base.qss").write_text("/* bundled */")
    monkeypatch.setattr(sys, "_MEIPASS", str(tmp_path), raising=False)
    assert resources.resources_dir() == tmp_path / "resources"
    assert resources.read_text("styles", "base.qss") == "/* bundled */"


def test_desktop_entry_is_valid():
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str
    entry.read(ROOT / "installer" / "linux" / "dopamine.desktop", encoding="utf-8")
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application" and section["Exec"] == "dopamine" and section["Icon"] == "dopamine"
    assert section["Terminal"] == "false" and section["Categories"].endswith(";")


def test_tar_holds_bundle_desktop_entry_icon_and_installer(tmp_path):
    dist = tmp_path / "dist"
    bundle = dist / "Dopamine"
    (bundle / "_internal").mkdir(parents=True)
    (bundle / "dopamine").write_text("#!/bin/sh\n")
    (bundle / "dopamine").chmod(0o755)
    (bundle / "_internal" / "libfoo.so.1").write_text("lib")
    (bundle / "_internal" / "libfoo.so").symlink_to("libfoo.so.1")
    icons = make_icons.write_icons(tmp_path / "icons")

    out = make_tar.make_tar(dist, icons["png"].parent)

    assert out == dist / make_tar.archive_name()
    top = f"dopamine-{make_tar.__version__}"
    with tarfile.open(out) as tar:
        members = {m.name: m for m in tar.getmembers()}
    for name in ("Dopamine/dopamine", "dopamine.desktop", "install.sh", "dopamine.png", "dopamine.svg"):
        assert f"{top}/{name}" in members
    assert members[f"{top}/Dopamine/dopamine"].mode & 0o111
    assert members[f"{top}/install.sh"].mode & 0o111
    link = members[f"{top}/Dopamine/_internal/libfoo.so"]
    assert link.issym() and link.linkname == "libfoo.so.1"
    assert not list(dist.glob("*.partial"))


measure_startup = load("measure_startup")


def test_startup_probe_output_is_parsed():
    output = "log line\nDOPAMINE_WINDOW_SHOWN 1700000000.250000 Dopamine — x\nDOPAMINE_HEAVY_MODULES -\n"
    assert measure_startup.parse_probe(output) == (1700000000.25, "-")


def test_startup_probe_missing_is_an_error():
    with pytest.raises(RuntimeError, match="never reported its main window"):
        measure_startup.parse_probe("Traceback (most recent call last):\n")


def unpacked_archive(tmp_path: Path) -> Path:
    """The unpacked tar.gz's layout, with a stand-in program."""
    top = tmp_path / "dopamine-0.1.0"
    (top / "Dopamine" / "_internal").mkdir(parents=True)
    program = top / "Dopamine" / "dopamine"
    program.write_text("#!/bin/sh\necho dopamine 0.1.0\n")
    program.chmod(0o755)
    for name in ("dopamine.desktop", "install.sh"):
        (top / name).write_bytes((ROOT / "installer" / "linux" / name).read_bytes())
    (top / "dopamine.svg").write_bytes((ROOT / "resources" / "icons" / "app.svg").read_bytes())
    (top / "dopamine.png").write_bytes(b"png")
    return top


def run_install(top: Path, tmp_path: Path, *args: str, prefix: Path | None = None):
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"),
           "PREFIX": str(prefix or tmp_path / "opt" / "dopamine"), "BIN_DIR": str(tmp_path / "bin"),
           "DATA_DIR": str(tmp_path / "share")}
    return subprocess.run(["bash", str(top / "install.sh"), *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_install_sh_installs_reinstalls_and_uninstalls(tmp_path):
    top = unpacked_archive(tmp_path)
    for _ in range(2):  # installing over an earlier installation replaces it
        done = run_install(top, tmp_path)
        assert done.returncode == 0, done.stderr
    program = tmp_path / "opt" / "dopamine" / "dopamine"
    assert subprocess.run([str(tmp_path / "bin" / "dopamine")], capture_output=True, text=True).stdout == "dopamine 0.1.0\n"
    desktop = (tmp_path / "share" / "applications" / "dopamine.desktop").read_text()
    assert f'Exec="{program}"' in desktop.splitlines()
    assert (tmp_path / "share" / "icons" / "hicolor" / "scalable" / "apps" / "dopamine.svg").is_file()

    done = run_install(top, tmp_path, "--uninstall")
    assert done.returncode == 0, done.stderr
    assert not program.exists() and not (tmp_path / "bin" / "dopamine").exists()
    assert not (tmp_path / "share" / "applications" / "dopamine.desktop").exists()


def test_install_sh_never_deletes_a_folder_that_is_not_an_installation(tmp_path):
    top = unpacked_archive(tmp_path)
    precious = tmp_path / "documents"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep")
    for args in ((), ("--uninstall",)):
        done = run_install(top, tmp_path, *args, prefix=precious)
        assert done.returncode == 1 and "not a Dopamine installation" in done.stderr
        assert (precious / "notes.txt").read_text() == "keep"


def test_install_sh_names_missing_system_libraries_with_install_lines(tmp_path):
    top = unpacked_archive(tmp_path)
    plugin = top / "Dopamine" / "_internal" / "PySide6" / "Qt" / "plugins" / "platforms" / "libqxcb.so"
    plugin.parent.mkdir(parents=True)
    plugin.write_bytes(b"")
    fake = tmp_path / "fakebin"
    fake.mkdir()
    (fake / "ldd").write_text("#!/bin/sh\nprintf '\\tlibxcb.so.1 => not found\\n\\tlibEGL.so.1 => not found\\n"
                              "\\tlibxcb.so.1 => not found\\n\\tlibodd.so.3 => not found\\n"
                              "\\tlibc.so.6 => /lib/libc.so.6 (0x1)\\n'\n")
    (fake / "ldd").chmod(0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}", "HOME": str(tmp_path / "home"), "PREFIX": str(tmp_path / "opt"),
           "BIN_DIR": str(tmp_path / "bin"), "DATA_DIR": str(tmp_path / "share")}
    done = subprocess.run(["bash", str(top / "install.sh")], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr  # installed anyway: the app says the same when started
    assert "lacks: libEGL.so.1 libodd.so.3 libxcb.so.1" in done.stderr
    assert "Debian/Ubuntu:  sudo apt-get install libegl1 libxcb1" in done.stderr
    assert "Fedora:         sudo dnf install libglvnd-egl libxcb" in done.stderr
    assert "provides libodd.so.3" in done.stderr


def test_install_sh_is_quiet_when_the_real_plugin_finds_everything(tmp_path):
    """The real Qt X11 plug-in beside the real Qt libraries, with the system libraries `make setup` installs."""
    from launcher.platform_check import plugin_folder

    real = plugin_folder()
    top = unpacked_archive(tmp_path)
    qt = top / "Dopamine" / "_internal" / "PySide6" / "Qt"
    (qt / "plugins" / "platforms").mkdir(parents=True)
    (qt / "plugins" / "platforms" / "libqxcb.so").write_bytes((real / "libqxcb.so").read_bytes())
    (qt / "lib").symlink_to(real.parent.parent / "lib")
    done = run_install(top, tmp_path)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr
