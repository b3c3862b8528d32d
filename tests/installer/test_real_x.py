"""The app starts in a real X server (Xvfb, Qt's xcb plug-in and its system libraries), not offscreen, and
its window is on the screenshot. `make setup` / `make test` install Xvfb and the libraries (as root)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "installer"))
import real_x  # noqa: E402


def _xvfb_or_reason() -> str:
    if shutil.which("Xvfb") is not None:
        return ""
    reason = "Xvfb is not installed: run `make setup` as root, or: sudo apt-get install xvfb " + " ".join(
        os.popen(f"{ROOT / 'installer' / 'system_packages.sh'} --list").read().split())
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(reason)  # CI (root here) must have run `make test`'s system-packages step
    return reason


def test_the_app_opens_its_window_in_a_real_x_server(tmp_path):
    reason = _xvfb_or_reason()
    if reason:
        pytest.skip(reason)
    shot = tmp_path / "real-x.png"
    summary = real_x.run([sys.executable, str(ROOT / "installer" / "entry.py")], shot, exit_ms=2500)
    assert "Dopamine — private training for hospitals" in summary
    header = shot.read_bytes()[16:24]  # the PNG's IHDR: the whole X screen
    assert (int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")) == (1280, 800)
    keep = os.environ.get("DOPAMINE_REAL_X_SHOT")  # CI can keep the picture as an artifact
    if keep:
        shutil.copyfile(shot, keep)


def test_the_screenshot_reader_round_trips_a_frame_buffer(tmp_path):
    """Xvfb's XWD frame buffer (LSB-first BGRX) becomes the same pixels in the PNG."""
    import struct

    import numpy as np
    from PIL import Image

    width, height = 5, 3
    rgb = np.arange(width * height * 3, dtype=np.uint8).reshape(height, width, 3)
    bgrx = np.concatenate([rgb[..., ::-1], np.zeros((height, width, 1), np.uint8)], axis=2)
    name = b"Xvfb\0"
    header = struct.pack(">25I", 100 + len(name), 7, 2, 24, width, height, 0, 0, 32, 0, 32, 32, 4 * width, 4,
                         0xFF0000, 0xFF00, 0xFF, 8, 0, 0, width, height, 0, 0, 0)
    (tmp_path / "screen").write_bytes(header + name + bgrx.tobytes())
    w, h, data = real_x.read_xwd(tmp_path / "screen")
    real_x.write_png(tmp_path / "screen.png", w, h, data)
    assert (w, h) == (width, height)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "screen.png")), rgb)
