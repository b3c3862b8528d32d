"""Fuzzing the DICOM reader (core.data.images) with files pydicom wrote in every transfer syntax Dopamine
reads, then: header attributes set to hostile values, transfer syntaxes no installed decoder handles,
and raw byte mutations. Each file is opened and every frame decoded (at most 3): an RGB image of the
header's size, or an ImageReadError with one line."""

import io

import numpy as np
import pydicom
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_kit import corpus_params, fuzz_settings, mutate, run_case

from core.data.dicom_writer import write_dicom

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Compressed syntaxes with no decoder in this installation (pydicom names them, nothing decodes them).
NO_DECODER = ("1.2.840.10008.1.2.4.100",  # MPEG2 main profile
              "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264
              "1.2.840.10008.1.2.4.107",  # HEVC/H.265
              "1.2.840.10008.1.2.4.110",  # JPEG XL lossless
              "1.2.840.10008.1.2.4.112",  # JPEG XL
              "1.2.840.10008.1.2.4.94",  # JPIP referenced
              "1.2.840.10008.1.2.8.1",  # deflated image frame compression
              "1.2.3.4.5.6.7")  # not a transfer syntax at all
KNOWN = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.4.50",
         "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90",
         "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.5")

# (syntax, kind, frames): the seeds every case starts from.
SEEDS = [("explicit", "grey8", 1), ("implicit", "grey16", 1), ("big_endian", "rgb", 1), ("deflated", "grey8", 2),
         ("explicit", "palette", 1), ("explicit", "ybr", 1), ("jpeg_baseline", "rgb", 1), ("jpeg_lossless", "grey16", 2),
         ("jpeg_lossless_sv1", "grey8", 1), ("jpeg_ls", "rgb", 1), ("jpeg2000_lossless", "grey16", 1),
         ("jpeg2000", "rgb", 2), ("rle", "rgb", 1), ("rle", "grey16", 3), ("explicit", "mono1", 1)]


def _seed(tmp, syntax: str, kind: str, frames: int) -> bytes:
    rng = np.random.default_rng(len(syntax) * 31 + frames)
    attributes = {}
    if kind == "grey8":
        arrays = [rng.integers(0, 256, (36, 40), dtype=np.uint8) for _ in range(frames)]
        options = {}
    elif kind in ("grey16", "mono1"):
        arrays = [rng.integers(0, 4096, (40, 36), dtype=np.uint16) for _ in range(frames)]
        options = {"bits_stored": 12}
        if kind == "mono1":
            options["photometric"] = "MONOCHROME1"
            attributes = {"WindowCenter": 2000, "WindowWidth": 1000, "RescaleSlope": 2, "RescaleIntercept": -5}
    elif kind == "palette":
        arrays = [rng.integers(0, 4, (8, 8), dtype=np.uint8) for _ in range(frames)]
        options = {"palette": np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)}
    else:
        arrays = [rng.integers(0, 256, (36, 40, 3), dtype=np.uint8) for _ in range(frames)]
        options = {"photometric": "YBR_FULL"} if kind == "ybr" else {}
    path = write_dicom(tmp / f"{syntax}-{kind}-{frames}.dcm", arrays if frames > 1 else arrays[0], syntax=syntax,
                       Laterality="L", Manufacturer="Fuzz", **options, **attributes)
    return path.read_bytes()


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dicom-seeds")
    return [_seed(tmp, *seed) for seed in SEEDS]


def decode(data: bytes, name: str):
    from core.data.images import open_image

    opened = open_image(data, name)
    for index in range(min(opened.info.frames, 3)):
        image = opened.frame(index)
        assert image.mode == "RGB", f"{name}: decoded to {image.mode}, not RGB"
        assert image.size == (opened.info.width, opened.info.height), (
            f"{name}: the header says {opened.info.width}x{opened.info.height}, the pixels are {image.size}")
    return opened


# Header attributes and hostile values for them (strings are written as they are, whatever the VR).
HOSTILE = {
    "Rows": [0, 1, 3, 65535], "Columns": [0, 1, 5, 65535],
    "NumberOfFrames": ["0", "-1", "2", "3", "65", "1000000000", "abc", "1.5", ""],
    "SamplesPerPixel": [0, 1, 2, 3, 4, 65535], "BitsAllocated": [0, 1, 7, 8, 12, 16, 32, 64, 65535],
    "BitsStored": [0, 1, 8, 12, 16, 17, 33, 65535], "HighBit": [0, 7, 15, 31, 65535],
    "PixelRepresentation": [0, 1, 2], "PlanarConfiguration": [0, 1, 2, 65535],
    "PhotometricInterpretation": ["MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT",
                                  "YBR_RCT", "PALETTE COLOR", "CMYK", "HSV", "", "X" * 64],
    "WindowCenter": ["nan", "inf", "-1e308", "40", "40\\80"], "WindowWidth": ["0", "-5", "nan", "1e-300", "1"],
    "RescaleSlope": ["0", "nan", "inf", "1e308", "-1"], "RescaleIntercept": ["nan", "-1e308", "3"],
    "VOILUTFunction": ["SIGMOID", "LINEAR_EXACT", "BOGUS"], "HorizontalFieldOfView": ["nan", "-1", "1e999", "45"],
    "ImageLaterality": ["L", "R", "B", "\x00"],
}


@st.composite
def dicom_files(draw, seeds):
    data = draw(st.sampled_from(seeds))
    how = draw(st.sampled_from(("attributes", "syntax", "bytes", "attributes+bytes")))
    if "attributes" in how or how == "syntax":
        dataset = pydicom.dcmread(io.BytesIO(data))
        if how == "syntax":
            dataset.file_meta.TransferSyntaxUID = draw(st.sampled_from(NO_DECODER + KNOWN))
        else:
            for keyword in draw(st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=4, unique=True)):
                value = draw(st.sampled_from(HOSTILE[keyword]))
                try:
                    setattr(dataset, keyword, value)
                except (ValueError, TypeError, OverflowError):
                    continue
        if draw(st.booleans()) and "PixelData" in dataset:
            cut = draw(st.integers(0, len(dataset.PixelData)))
            dataset.PixelData = dataset.PixelData[:cut]
        buffer = io.BytesIO()
        try:
            dataset.save_as(buffer, enforce_file_format=False)
        except Exception:  # noqa: BLE001 - pydicom cannot write every hostile value; keep the seed
            buffer = io.BytesIO(data)
        data = buffer.getvalue()
    if "bytes" in how:
        data = mutate(data, draw, max_edits=3)
    name = draw(st.sampled_from(("scan.dcm", "scan.dcm", "IM0001")))
    return data, name


def test_dicom_files_decode_or_are_refused_in_one_line(seeds):
    @fuzz_settings("dicom")
    @given(dicom_files(seeds))
    def check(case):
        data, name = case
        run_case("dicom", lambda: decode(data, name), data=data, suffix=".dcm" if name.endswith(".dcm") else "")

    check()


@pytest.mark.parametrize("slope, intercept", [("nan", "0"), ("1e308", "0"), ("1", "-inf"), ("1e308", "-1e308")])
def test_a_rescale_that_gives_no_numbers_is_refused(tmp_path, slope, intercept):
    """A slope or intercept that makes the pixel values infinite or NaN would show noise as an image."""
    from core.data.images import ImageReadError

    path = write_dicom(tmp_path / "x.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8) * 50, bits_stored=12,
                       RescaleSlope=slope, RescaleIntercept=intercept)
    data = path.read_bytes()
    refused = run_case("dicom", lambda: decode(data, "x.dcm"), data=data, suffix=".dcm")
    assert isinstance(refused, ImageReadError) and "not finite" in str(refused)


@pytest.mark.parametrize("path", corpus_params("dicom"))
def test_the_dicom_corpus(path):
    data = path.read_bytes()
    run_case("dicom", lambda: decode(data, path.name), data=data, suffix=path.suffix)
