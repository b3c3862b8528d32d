"""Fuzzing the image decoder (core.data.images) with PNG, JPEG, TIFF and BMP files: valid ones of every
mode the formats allow, then truncated and mutated. Each file is decoded the way validation and the cache
do (header, then every frame): a usable RGB image of the size the header gave, or an ImageReadError."""

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from reliability_kit import corpus_params, fuzz_settings, mutate, run_case

from core.data.images import open_image

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about every corrupt EXIF block

# (format, suffix, modes Pillow can save in that format, save options to draw from)
FORMATS = {
    "PNG": (".png", ("1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I"),
            ({}, {"optimize": True}, {"interlace": 1}, {"compress_level": 0})),
    "JPEG": (".jpg", ("L", "RGB", "CMYK"), ({}, {"quality": 5}, {"progressive": True}, {"subsampling": 0})),
    "TIFF": (".tif", ("1", "L", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"),
             ({}, {"compression": "tiff_lzw"}, {"compression": "tiff_adobe_deflate"}, {"compression": "packbits"},
              {"compression": "raw"})),
    "BMP": (".bmp", ("1", "L", "P", "RGB"), ({},)),
}


def decode(data: bytes, name: str):
    """What validation does with a file: the header, then every frame, checked against the header."""
    opened = open_image(data, name)
    for index in range(opened.info.frames):
        image = opened.frame(index)
        assert image.mode == "RGB", f"{name}: decoded to {image.mode}, not RGB"
        assert image.size == (opened.info.width, opened.info.height), (
            f"{name}: the header says {opened.info.width}x{opened.info.height}, the pixels are {image.size}")
    return opened


@st.composite
def image_files(draw):
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    suffix, modes, options = FORMATS[fmt]
    mode = draw(st.sampled_from(modes))
    width, height = draw(st.integers(1, 48)), draw(st.integers(1, 48))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = Image.frombytes("L", (width, height), rng.integers(0, 256, width * height, dtype=np.uint8).tobytes())
    image = image.convert("RGB").convert(mode) if mode not in ("I;16", "I", "F") else image.convert(mode)
    save = dict(draw(st.sampled_from(options)))
    if fmt == "JPEG" and draw(st.booleans()):
        exif = Image.Exif()
        exif[0x0112] = draw(st.integers(0, 9))  # orientation, including invalid values
        exif[0x010F] = draw(st.text(max_size=20))  # make
        save["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    try:
        image.save(buffer, format=fmt, **save)
    except (OSError, ValueError, KeyError):  # a mode/option pair the encoder does not support
        image.convert("RGB").save(buffer, format=fmt)
    data = mutate(buffer.getvalue(), draw) if draw(st.booleans()) else buffer.getvalue()
    # Now and then the suffix lies (a PNG called .jpg; a JPEG called .dcm goes the DICOM way).
    name = "img" + (draw(st.sampled_from((".png", ".jpg", ".jpeg", ".tif", ".bmp", ".dcm", "")))
                    if draw(st.integers(0, 9)) == 0 else suffix)
    return data, name


@fuzz_settings("images", share=0.8)
@given(image_files())
def test_images_decode_or_are_refused_in_one_line(case):
    data, name = case
    run_case("images", lambda: decode(data, name), data=data, suffix=name[3:])


@fuzz_settings("images", share=0.2)
@given(st.binary(max_size=2048), st.sampled_from((".png", ".jpg", ".tif", ".bmp")))
def test_random_bytes_are_refused(data, suffix):
    prefix = {".png": b"\x89PNG\r\n\x1a\n", ".jpg": b"\xff\xd8\xff", ".tif": b"II*\x00", ".bmp": b"BM"}[suffix]
    data = prefix + data
    run_case("images", lambda: decode(data, "img" + suffix), data=data, suffix=suffix)


@pytest.mark.parametrize("path", corpus_params("images"))
def test_the_image_corpus(path):
    data = path.read_bytes()
    run_case("images", lambda: decode(data, path.name), data=data, suffix=path.suffix)
