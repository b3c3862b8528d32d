"""Hostile compressed DICOM against the real decoders (libjpeg, openjpeg, CharLS, RLE) that issue 16 added:
codestreams whose headers claim billions of pixels, RLE segments pointing past the data, a frame count that
lies. Each must be refused with a reason before any decoder sizes a buffer from the lie.

Found while writing this test: a JPEG Lossless frame whose SOF claims 60000 x 60000 (in a 64 x 64 DICOM
image) made pylibjpeg-libjpeg allocate 14 GB and work for 95 s before failing. The codestream's own size
is now held to Rows and Columns before decoding. The child process runs with its address space capped,
so that a regression fails here instead of exhausting the machine's memory.
"""

import json
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pydicom
from pydicom.encaps import encapsulate, generate_frames

from core.data.dicom_writer import write_dicom

ROOT = Path(__file__).resolve().parents[2]
ADDRESS_SPACE = 3 * 2**30  # far below the 10.8 GB a 60000 x 60000 x 3 frame would need
PEAK_RSS_LIMIT_MB = 1500


def _patched(path: Path, patch) -> Path:
    ds = pydicom.dcmread(path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    first = bytearray(next(generate_frames(ds.PixelData, number_of_frames=frames)))
    patch(first)
    ds.PixelData = encapsulate([bytes(first)] * frames)
    ds.save_as(path)
    return path


def _hostile_files(folder: Path) -> list[Path]:
    grey = np.zeros((64, 64), np.uint8)
    files = []

    def siz_bomb(data: bytearray) -> None:  # JPEG 2000 SIZ: Xsiz, Ysiz after marker, Lsiz, Rsiz
        at = data.index(b"\xff\x51")
        struct.pack_into(">II", data, at + 6, 60000, 60000)

    files.append(_patched(write_dicom(folder / "j2k_siz.dcm", grey, syntax="jpeg2000_lossless"), siz_bomb))

    def sof_bomb(data: bytearray) -> None:  # JPEG-LS / JPEG SOF: P, Y, X after marker and length
        for marker in (b"\xff\xf7", b"\xff\xc3"):
            if marker in data:
                at = data.index(marker)
                struct.pack_into(">HH", data, at + 5, 60000, 60000)

    files.append(_patched(write_dicom(folder / "jls_sof.dcm", grey, syntax="jpeg_ls"), sof_bomb))
    files.append(_patched(write_dicom(folder / "jll_sof.dcm", grey, syntax="jpeg_lossless"), sof_bomb))

    def rle_offsets(data: bytearray) -> None:  # RLE header: segment count, then 15 offsets
        struct.pack_into("<I", data, 0, 15)
        for index in range(15):
            struct.pack_into("<I", data, 4 + 4 * index, 0x7FFFFFF0 - index)

    files.append(_patched(write_dicom(folder / "rle_offsets.dcm", grey, syntax="rle"), rle_offsets))

    liar = write_dicom(folder / "frames_liar.dcm", grey, syntax="rle")
    ds = pydicom.dcmread(liar)
    ds.NumberOfFrames = 1_000_000_000  # one frame of data, a billion declared
    ds.save_as(liar)
    files.append(liar)
    return files


CHILD = textwrap.dedent("""
    import json, resource, sys
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    sys.path.insert(0, {root!r})
    from core.data.images import ImageReadError, load_frames
    kinds = {{}}
    for name in sys.argv[1:]:
        try:
            load_frames(name)
            kinds[name] = "decoded"
        except ImageReadError as exc:
            kinds[name] = exc.kind + ": " + str(exc)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(json.dumps({{"kinds": kinds, "peak_mb": peak}}))
""")


def test_hostile_codestreams_are_refused_without_allocating_what_they_claim(tmp_path):
    files = _hostile_files(tmp_path)
    code = CHILD.format(limit=ADDRESS_SPACE, root=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code, *map(str, files)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    kinds = {Path(name).name: kind.split(": ", 1)[0] for name, kind in result["kinds"].items()}
    reasons = {Path(name).name: kind for name, kind in result["kinds"].items()}
    assert kinds == {
        "j2k_siz.dcm": "unreadable", "jls_sof.dcm": "unreadable", "jll_sof.dcm": "unreadable",
        "rle_offsets.dcm": "unreadable", "frames_liar.dcm": "too_many_frames",
    }
    for name in ("j2k_siz.dcm", "jls_sof.dcm", "jll_sof.dcm"):
        # Refused from the codestream's header, before a decoder ran: not by a decoder that gave up.
        assert "says 60000x60000 pixels but the DICOM header says 64x64" in reasons[name]
    assert result["peak_mb"] < PEAK_RSS_LIMIT_MB
