"""Pack the Linux bundle for download: dist/dopamine-VERSION-linux-ARCH.tar.gz.

    python installer/make_tar.py [--dist dist]

The archive holds one folder, dopamine-VERSION/, with the bundle (Dopamine/), the menu entry
(dopamine.desktop), the icon (dopamine.png, dopamine.svg) and install.sh, which installs all of it
for the current user. Symbolic links inside the bundle stay links.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from core import __version__  # noqa: E402


def archive_name(version: str = __version__, machine: str | None = None) -> str:
    return f"dopamine-{version}-linux-{machine or platform.machine()}.tar.gz"


def members(dist: Path, icons: Path) -> list[tuple[Path, str]]:
    """(file on disk, name in the archive) for everything the archive holds."""
    linux = ROOT / "installer" / "linux"
    return [
        (dist / "Dopamine", "Dopamine"),
        (linux / "dopamine.desktop", "dopamine.desktop"),
        (linux / "install.sh", "install.sh"),
        (icons / "dopamine.png", "dopamine.png"),
        (ROOT / "resources" / "icons" / "app.svg", "dopamine.svg"),
    ]


def make_tar(dist: Path, icons: Path) -> Path:
    missing = [str(path) for path, _ in members(dist, icons) if not path.exists()]
    if missing:
        raise SystemExit(f"make_tar: missing {', '.join(missing)}; run `make bundle` first")
    out = dist / archive_name()
    top = f"dopamine-{__version__}"
    partial = out.with_name(out.name + ".partial")
    # Level 6: nearly the size of level 9 for torch's libraries, in half the time.
    with tarfile.open(partial, "w:gz", compresslevel=6) as tar:
        for path, name in members(dist, icons):
            tar.add(path, arcname=f"{top}/{name}")
    partial.replace(out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", type=Path, default=ROOT / "dist")
    parser.add_argument("--icons", type=Path, default=ROOT / "build" / "icons")
    args = parser.parse_args()
    out = make_tar(args.dist, args.icons)
    print(f"{out} ({out.stat().st_size / 1e6:.0f} MB)")


if __name__ == "__main__":
    main()
