"""Start the desktop app in a real X server (Xvfb), not offscreen, and take a screenshot of its window.

    python installer/real_x.py [--out SHOT.png] [--exit-ms MS] -- COMMAND...

COMMAND is the app (``python installer/entry.py`` from source, ``dist/Dopamine/dopamine`` for the bundle).
It runs with DISPLAY set to a fresh Xvfb and without QT_QPA_PLATFORM, so Qt loads its X11 (xcb) plug-in and
every library that needs, as on a hospital's desktop; the launcher's probe says when the main window is
painted, the screenshot is read from Xvfb's frame buffer (-fbdir) while the window is up, and the app quits
by itself through its normal exit path. Exit status 0 when the window was shown, the screenshot holds it
and the app exited cleanly with no Qt platform error or traceback; otherwise 1 and what went wrong.

Standard library only, so the bundle's smoke test can run it with any Python 3.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

WINDOW_MARK = "DOPAMINE_WINDOW_SHOWN"
SCREEN = (1280, 800)


class RealXError(Exception):
    pass


def start_xvfb(fbdir: Path, *, timeout_s: float = 20.0) -> tuple[subprocess.Popen, str]:
    """A fresh Xvfb writing its screen to ``fbdir``; (process, DISPLAY value). -displayfd picks a free display."""
    xvfb = shutil.which("Xvfb")
    if xvfb is None:
        raise RealXError("Xvfb is not installed: run `make setup` as root, or: sudo apt-get install xvfb")
    read_end, write_end = os.pipe()
    process = subprocess.Popen(
        [xvfb, "-displayfd", str(write_end), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-fbdir", str(fbdir),
         "-nolisten", "tcp", "-noreset"],
        pass_fds=(write_end,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(write_end)
    number = b""
    deadline = time.monotonic() + timeout_s
    with os.fdopen(read_end, "rb") as reader:
        os.set_blocking(reader.fileno(), False)
        while not number.endswith(b"\n"):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                error = process.stderr.read().decode(errors="replace")[-600:] if process.stderr else ""
                raise RealXError(f"Xvfb did not start: {error.strip() or 'no display number'}")
            try:
                chunk = reader.read()
            except BlockingIOError:
                chunk = None
            if chunk:
                number += chunk
            else:
                time.sleep(0.02)
    return process, f":{number.decode().strip()}"


def read_xwd(path: Path) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of Xvfb's frame buffer file (XWD, 24-bit depth in 32-bit pixels)."""
    data = path.read_bytes()
    for order in (">", "<"):  # the header's byte order is the writer's
        fields = struct.unpack(order + "25I", data[:100])
        if fields[1] == 7:  # XWD file version
            break
    else:
        raise RealXError(f"{path} is not an XWD file")
    header_size, _version, _format, depth, width, height = fields[:6]
    byte_order, bits_per_pixel, bytes_per_line, ncolors = fields[7], fields[11], fields[12], fields[19]
    if bits_per_pixel != 32 or depth != 24:
        raise RealXError(f"unexpected frame buffer format: depth {depth}, {bits_per_pixel} bits per pixel")
    start = header_size + 12 * ncolors
    pixels = data[start:start + bytes_per_line * height]
    rgb = bytearray(width * height * 3)
    rows = [pixels[y * bytes_per_line:y * bytes_per_line + 4 * width] for y in range(height)]
    packed = b"".join(rows)
    # LSB-first pixels are B, G, R, X in memory; MSB-first are X, R, G, B.
    red, green, blue = (2, 1, 0) if byte_order == 0 else (1, 2, 3)
    rgb[0::3], rgb[1::3], rgb[2::3] = packed[red::4], packed[green::4], packed[blue::4]
    return width, height, bytes(rgb)


def write_png(path: Path, width: int, height: int, rgb: bytes) -> None:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    stride = 3 * width
    raw = b"".join(b"\x00" + rgb[y * stride:(y + 1) * stride] for y in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def distinct_colours(width: int, height: int, rgb: bytes, step: int = 7) -> int:
    seen = set()
    for y in range(0, height, step):
        for x in range(0, width, step):
            i = 3 * (y * width + x)
            seen.add(rgb[i:i + 3])
    return len(seen)


def covered_fraction(width: int, height: int, rgb: bytes, step: int = 7) -> float:
    """The share of the screen that is not Xvfb's black root window."""
    total = covered = 0
    for y in range(0, height, step):
        for x in range(0, width, step):
            i = 3 * (y * width + x)
            total += 1
            covered += rgb[i:i + 3] != b"\x00\x00\x00"
    return covered / total


def run(command: list[str], out: Path, *, exit_ms: int = 3000, timeout_s: float = 120.0) -> str:
    """Run the app in Xvfb, save the screenshot to ``out``; a one-line summary (RealXError on failure)."""
    with tempfile.TemporaryDirectory(prefix="dopamine-real-x-") as tmp:
        xvfb, display = start_xvfb(Path(tmp))
        try:
            env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
            env.update(DISPLAY=display, DOPAMINE_STARTUP_PROBE="1", DOPAMINE_SMOKE_EXIT_MS=str(exit_ms))
            env.setdefault("DOPAMINE_HOME", str(Path(tmp) / "home"))
            started = time.monotonic()
            app = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            errors: list[str] = []
            drain = threading.Thread(target=lambda: errors.append(app.stderr.read()), daemon=True)
            drain.start()
            shown = None
            lines = []
            for line in app.stdout:
                lines.append(line)
                if line.startswith(WINDOW_MARK):
                    shown = line.split(maxsplit=2)
                    break
                if time.monotonic() - started > timeout_s:
                    break
            if shown is not None:
                time.sleep(min(1.0, exit_ms / 3000))  # let the first frames reach the frame buffer
                width, height, rgb = read_xwd(Path(tmp) / "Xvfb_screen0")
                write_png(out, width, height, rgb)
            try:
                rest, _ = app.communicate(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                app.kill()
                raise RealXError("the app did not quit by itself after its window was shown") from None
            drain.join(timeout=10)
            stderr = "".join(errors)
            output = "".join(lines) + (rest or "")
        finally:
            xvfb.terminate()
            xvfb.wait(timeout=10)
    if shown is None:
        raise RealXError(f"the main window was never shown (exit code {app.returncode}): {stderr.strip()[-800:]}")
    if app.returncode != 0:
        raise RealXError(f"the app exited with code {app.returncode}: {stderr.strip()[-800:]}")
    for bad in ("qt.qpa", "Traceback", "Could not load the Qt platform plugin"):
        if bad in stderr or bad in output:
            raise RealXError(f"the app's output has {bad!r}: {stderr.strip()[-800:]}")
    colours, covered = distinct_colours(width, height, rgb), covered_fraction(width, height, rgb)
    if colours < 20 or covered < 0.5:
        raise RealXError(f"the screenshot {out} does not show the window ({colours} colours, "
                         f"{covered:.0%} of the screen covered)")
    seconds = float(shown[1]) - (time.time() - (time.monotonic() - started))
    return (f"window {' '.join(shown[2:]).strip()!r} shown on Xvfb {display} after {seconds:.2f} s; "
            f"screenshot {out} ({width}x{height}, {colours} colours, {covered:.0%} covered)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="real_x.py", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("real-x-screenshot.png"))
    parser.add_argument("--exit-ms", type=int, default=3000)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command that starts the app after --")
    try:
        print(f"DOPAMINE_REAL_X ok: {run(command, args.out, exit_ms=args.exit_ms)}")
    except RealXError as exc:
        print(f"DOPAMINE_REAL_X failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
