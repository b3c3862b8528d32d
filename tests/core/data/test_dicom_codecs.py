"""Compressed, multi-frame and unusual DICOM: every transfer syntax, the pixel semantics a viewer applies,
and the files pydicom ships as its own test data."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from core.data.dicom_writer import TRANSFER_SYNTAXES, jpeg_lossless, write_dicom
from core.data.images import (
    MAX_FRAMES_PER_FILE,
    ImageReadError,
    load_frames,
    load_image,
    read_image_info,
)

LOSSLESS = ["implicit", "explicit", "deflated", "big_endian", "jpeg_lossless", "jpeg_lossless_sv1", "jpeg_ls",
            "jpeg2000_lossless", "rle"]
LOSSY = {"jpeg_baseline": 3.0, "jpeg_ls_near": 2.5, "jpeg2000": 3.0}  # mean absolute error allowed
PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _rgb(width: int = 64, height: int = 48, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = rng.uniform(20, 120, size=3)
    return np.stack([base[0] + xs * 2, base[1] + ys * 2, base[2] + xs + ys], axis=-1).clip(0, 255).astype(np.uint8)


def _grey16(width: int = 64, height: int = 48) -> np.ndarray:
    ys, xs = np.mgrid[0:height, 0:width]
    return (300 + xs * 50 + ys * 7).astype(np.uint16)


def _expected_grey16(values: np.ndarray) -> np.ndarray:
    """No window in the file: the image's own range is stretched onto 0..255."""
    low, high = float(values.min()), float(values.max())
    return np.rint((values - low) * 255.0 / (high - low)).astype(int)


def test_every_listed_syntax_is_tested():
    assert set(LOSSLESS) | set(LOSSY) == set(TRANSFER_SYNTAXES)


@pytest.mark.parametrize("syntax", LOSSLESS)
def test_lossless_syntaxes_decode_exactly(tmp_path, syntax):
    rgb = _rgb()
    grey = _grey16()
    colour = np.asarray(load_image(write_dicom(tmp_path / "c.dcm", rgb, syntax=syntax))).astype(int)
    assert colour.shape == (48, 64, 3)
    assert np.array_equal(colour, rgb)
    info = read_image_info(tmp_path / "c.dcm")
    assert info.transfer_syntax == pydicom.uid.UID(TRANSFER_SYNTAXES[syntax]).name
    deep = np.asarray(load_image(write_dicom(tmp_path / "g.dcm", grey, syntax=syntax)))[..., 0].astype(int)
    assert np.abs(deep - _expected_grey16(grey)).max() <= 1


@pytest.mark.parametrize("syntax", sorted(LOSSY))
def test_lossy_syntaxes_decode_to_the_same_picture(tmp_path, syntax):
    rgb = _rgb(seed=4)
    pixels = np.asarray(load_image(write_dicom(tmp_path / "c.dcm", rgb, syntax=syntax))).astype(int)
    assert pixels.shape == rgb.shape
    assert np.abs(pixels - rgb).mean() < LOSSY[syntax]


def test_jpeg_lossless_encoder_handles_extreme_differences(tmp_path):
    # Differences of +-32768 (category 16) and byte stuffing (0xFF in the scan) both occur here.
    values = np.zeros((16, 16), np.uint16)
    values[::2, ::2] = 65535
    values[1::3, 1::3] = 32768
    for predictor in range(1, 8):
        stream = jpeg_lossless(values, 16, predictor)
        assert stream[:2] == b"\xff\xd8" and stream[-2:] == b"\xff\xd9"
    from pydicom.pixels import pixel_array

    path = write_dicom(tmp_path / "x.dcm", values, syntax="jpeg_lossless")
    assert np.array_equal(pixel_array(pydicom.dcmread(path)), values)


@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg_ls", "jpeg_baseline", "jpeg2000_lossless"])
def test_each_frame_of_a_multi_frame_file_is_an_image(tmp_path, syntax):
    frames = [_rgb(seed=s) for s in range(3)]
    path = write_dicom(tmp_path / "stereo.dcm", frames, syntax=syntax, ImageLaterality="R")
    decoded = load_frames(path)
    assert len(decoded) == 3 and read_image_info(path).frames == 3
    tolerance = 3.0 if syntax == "jpeg_baseline" else 0.0
    for index, frame in enumerate(frames):
        assert np.abs(np.asarray(decoded[index]).astype(int) - frame).mean() <= tolerance
        assert np.abs(np.asarray(load_image(path, frame=index)).astype(int) - frame).mean() <= tolerance
    with pytest.raises(ImageReadError, match="frame 4 does not exist"):
        load_image(path, frame=3)


def test_a_file_with_more_frames_than_the_cap_is_refused_with_a_clear_message(tmp_path):
    frames = [np.full((8, 8), i, np.uint8) for i in range(MAX_FRAMES_PER_FILE + 1)]
    path = write_dicom(tmp_path / "cine.dcm", frames)
    with pytest.raises(ImageReadError) as info:
        load_frames(path)
    assert info.value.kind == "too_many_frames"
    assert f"{MAX_FRAMES_PER_FILE + 1} frames" in str(info.value) and "export" in str(info.value)
    assert len(load_frames(path, max_frames=MAX_FRAMES_PER_FILE + 1)) == MAX_FRAMES_PER_FILE + 1


def test_monochrome1_16bit_is_windowed_then_inverted(tmp_path):
    values = np.full((8, 8), 1000, np.uint16)
    values[0] = 0
    values[1] = 4000
    path = write_dicom(tmp_path / "m1.dcm", values, photometric="MONOCHROME1", bits_stored=12,
                       WindowCenter=1000, WindowWidth=1000)
    pixels = np.asarray(load_image(path))[..., 0]
    # Low values are white in MONOCHROME1; the window's centre stays mid grey.
    assert pixels[0, 0] == 255 and pixels[1, 0] == 0 and abs(int(pixels[4, 4]) - 127) <= 1


def test_sigmoid_voi_function(tmp_path):
    values = np.array([[0, 500, 1000, 1500, 2000]] * 4, np.uint16)
    path = write_dicom(tmp_path / "s.dcm", values, WindowCenter=1000, WindowWidth=400, VOILUTFunction="SIGMOID")
    row = np.asarray(load_image(path))[0, :, 0].astype(int)
    assert row[2] in (127, 128) and row[0] <= 1 and row[4] >= 254


def test_voi_lut_sequence_wins_over_the_window(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    values = np.array([[100, 200, 300, 400]] * 4, np.uint16)
    lut = Dataset()
    # 4096 entries from 0: a step at 250 (everything below black, above white), unlike any window.
    lut.LUTDescriptor = [4096, 0, 16]
    lut.add_new(0x00283006, "US", [0] * 250 + [4095] * (4096 - 250))  # LUT Data
    path = write_dicom(tmp_path / "lut.dcm", values, bits_stored=12, VOILUTSequence=Sequence([lut]),
                       WindowCenter=2000, WindowWidth=10)
    row = np.asarray(load_image(path))[0, :, 0].tolist()
    assert row == [0, 0, 255, 255]


@pytest.mark.parametrize("photometric", ["YBR_FULL", "YBR_FULL_422"])
def test_native_ybr_is_converted_to_rgb(tmp_path, photometric):
    rgb = _rgb(seed=2)
    pixels = np.asarray(load_image(write_dicom(tmp_path / "y.dcm", rgb, photometric=photometric))).astype(int)
    # YBR_FULL is a rounding away from RGB; 4:2:2 also halves the colour resolution.
    assert np.abs(pixels - rgb).mean() < (1.5 if photometric == "YBR_FULL" else 3.0)


def test_jpeg_baseline_ybr_full_422_is_rgb_after_decoding(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[...] = (200, 40, 30)  # a red the eye would notice turning green or blue
    path = write_dicom(tmp_path / "j.dcm", rgb, syntax="jpeg_baseline", photometric="YBR_FULL_422")
    assert pydicom.dcmread(path).PhotometricInterpretation == "YBR_FULL_422"
    assert np.abs(np.asarray(load_image(path))[16, 16].astype(int) - [200, 40, 30]).max() <= 4


def test_planar_configuration_one_is_honoured(tmp_path):
    rgb = _rgb(seed=5)
    path = write_dicom(tmp_path / "p.dcm", rgb, planar_configuration=1)
    assert pydicom.dcmread(path).PlanarConfiguration == 1
    assert np.array_equal(np.asarray(load_image(path)), rgb)


@pytest.mark.parametrize("deep", [False, True])
def test_palette_colour(tmp_path, deep):
    palette = np.array([[0, 0, 0], [255, 0, 0], [0, 128, 255], [90, 200, 30]], np.uint16)
    if deep:
        palette = palette * 257  # 16-bit entries span 0..65535
    indices = np.array([[0, 1, 2, 3]] * 4, np.uint8)
    path = write_dicom(tmp_path / "pal.dcm", indices, palette=palette)
    row = np.asarray(load_image(path))[0].tolist()
    assert row == [[0, 0, 0], [255, 0, 0], [0, 128, 255], [90, 200, 30]]


def test_ophthalmic_metadata(tmp_path):
    path = write_dicom(tmp_path / "op.dcm", _rgb(), ImageLaterality="L", Laterality="R", Manufacturer="Topcon",
                       ManufacturerModelName="TRC-NW8", HorizontalFieldOfView=45)
    info = read_image_info(path)
    # The image's own laterality wins over the series'.
    assert (info.laterality, info.device, info.field_of_view, info.modality) == ("L", "Topcon TRC-NW8", "45 deg", "OP")
    series_only = read_image_info(write_dicom(tmp_path / "s.dcm", _rgb(), Laterality="R"))
    assert series_only.laterality == "R" and series_only.device is None and series_only.field_of_view is None


def test_missing_laterality_is_unknown_unless_the_name_says(tmp_path):
    assert read_image_info(write_dicom(tmp_path / "IM0001.dcm", _rgb())).laterality is None
    assert read_image_info(write_dicom(tmp_path / "10_left.dcm", _rgb())).laterality == "L"
    assert read_image_info(write_dicom(tmp_path / "IM_B.dcm", _rgb(), ImageLaterality="B")).laterality is None


def test_frame_laterality_in_functional_groups(tmp_path):
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    anatomy = Dataset()
    anatomy.FrameLaterality = "R"
    group = Dataset()
    group.FrameAnatomySequence = Sequence([anatomy])
    path = write_dicom(tmp_path / "mf.dcm", [_rgb(), _rgb(seed=1)],
                       SharedFunctionalGroupsSequence=Sequence([group]))
    assert read_image_info(path).laterality == "R"


def test_jpeg_photograph_exif_orientation_and_camera(tmp_path):
    upright = np.zeros((40, 20, 3), np.uint8)  # tall
    upright[:10] = 255  # white at the top
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))  # as the camera stored it: wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    exif[0x010F] = "Canon"
    exif[0x0110] = "Canon CR-2 AF"
    stored.save(tmp_path / "eye_right.jpg", exif=exif, quality=95)
    image = load_image(tmp_path / "eye_right.jpg")
    assert image.size == (20, 40)
    pixels = np.asarray(image).astype(int)
    assert pixels[:8].mean() > 200 and pixels[-20:].mean() < 40
    info = read_image_info(tmp_path / "eye_right.jpg")
    assert (info.width, info.height, info.device, info.laterality, info.format) == (20, 40, "Canon CR-2 AF", "R", "JPEG")


# --- pydicom's own test files (shipped in the pinned pydicom wheel) --------------------------------------

SHIPPED = {
    # file: (frames, transfer syntax the file uses)
    "JPGExtended.dcm": (1, "JPEG Extended (Process 2 and 4)"),
    "SC_rgb_jpeg_gdcm.dcm": (1, "JPEG Lossless, Non-Hierarchical, First-Order Prediction"),
    "MR_small_jpeg_ls_lossless.dcm": (1, "JPEG-LS Lossless Image Compression"),
    "SC_rgb_jls_lossy_line.dcm": (1, "JPEG-LS Lossy (Near-Lossless) Image Compression"),
    "GDCMJ2K_TextGBR.dcm": (1, "JPEG 2000 Image Compression (Lossless Only)"),
    "examples_ybr_color.dcm": (30, "JPEG Baseline (Process 1)"),
    "SC_rgb_rle_2frame.dcm": (2, "RLE Lossless"),
    "SC_rgb_rle_16bit_2frame.dcm": (2, "RLE Lossless"),
    "examples_palette.dcm": (1, "Explicit VR Little Endian"),
    "SC_ybr_full_422_uncompressed.dcm": (1, "Explicit VR Little Endian"),
}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_pydicom_test_files_decode(name):
    path = PYDICOM_FILES / name
    assert path.is_file(), f"pydicom no longer ships {name}; pick another file of this kind"
    frames, syntax = SHIPPED[name]
    info = read_image_info(path)
    assert info.frames == frames and info.transfer_syntax.startswith(syntax)
    images = load_frames(path)
    assert len(images) == frames
    for image in images:
        pixels = np.asarray(image)
        assert image.mode == "RGB" and pixels.shape == (info.height, info.width, 3)
        assert pixels.std() > 5  # a picture, not a flat or empty frame


def test_pydicom_rgb_files_agree_across_compressions():
    """The same picture stored as RLE, JPEG Lossless and JPEG-LS decodes to the same RGB."""
    reference = np.asarray(load_image(PYDICOM_FILES / "SC_rgb_rle.dcm")).astype(int)
    for name, tolerance in [("SC_rgb_jpeg_gdcm.dcm", 0), ("SC_rgb_jls_lossy_line.dcm", 3),
                            ("SC_rgb_jpeg_dcmtk.dcm", 12)]:
        pixels = np.asarray(load_image(PYDICOM_FILES / name)).astype(int)
        assert np.abs(pixels - reference).max() <= tolerance, name


def test_dcm_file_without_the_part10_preamble_still_decodes(tmp_path):
    rgb = _rgb(seed=8)
    full = write_dicom(tmp_path / "full.dcm", rgb).read_bytes()
    bare = tmp_path / "old_archive.dcm"
    bare.write_bytes(full[132:])  # no 128-byte preamble, no DICM marker (older archives)
    assert np.array_equal(np.asarray(load_image(bare)), rgb)
    noise = tmp_path / "noise.dcm"
    noise.write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError) as info:
        load_image(noise)
    assert info.value.kind in ("not_image", "unreadable", "truncated")


def test_codestream_size_reads_past_large_metadata_segments():
    import io

    from core.data.images import codestream_size

    buffer = io.BytesIO()
    # A 150 kB ICC profile spans three APP2 segments before the frame header.
    Image.fromarray(_rgb()).save(buffer, format="JPEG", icc_profile=bytes(150_000))
    assert codestream_size(buffer.getvalue()) == (64, 48)
    assert codestream_size(jpeg_lossless(_grey16(), 16)) == (64, 48)
    assert codestream_size(b"not a codestream") is None
    assert codestream_size(b"\xff\xd8\xff\xe0\x00") == (0, 0)  # cut short: refused, never guessed
