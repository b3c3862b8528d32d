import numpy as np
import pytest
from PIL import Image

from core.data.images import ImageReadError, is_image_file, load_image
from core.errors import DataError


@pytest.mark.parametrize("name", ["a.png", "a.jpg", "a.jpeg", "a.bmp", "a.tif", "a.TIFF"])
def test_common_formats_decode_to_rgb(tmp_path, write_image, name):
    path = write_image(tmp_path / name, size=(40, 32))
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (40, 32)
    assert is_image_file(path)


def test_sixteen_bit_grey_png_is_stretched_not_clipped(tmp_path):
    values = np.linspace(1000, 50000, 32 * 40).reshape(32, 40).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    pixels = np.asarray(load_image(tmp_path / "g16.png"))
    assert pixels.shape == (32, 40, 3)
    assert pixels.min() == 0 and pixels.max() == 255  # the full range, not everything at 255


def test_transparent_areas_become_black(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:4, :, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    pixels = np.asarray(load_image(tmp_path / "t.png"))
    assert pixels[0, 0].tolist() == [200, 0, 0] and pixels[7, 7].tolist() == [0, 0, 0]


@pytest.mark.parametrize("fmt,suffix", [("PNG", ".png"), ("JPEG", ".jpg")])
def test_truncated_files_are_caught(tmp_path, write_image, fmt, suffix):
    good = write_image(tmp_path / f"good{suffix}", size=(64, 64), fmt=fmt)
    data = good.read_bytes()
    bad = tmp_path / f"bad{suffix}"
    bad.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ImageReadError) as info:
        load_image(bad)
    assert info.value.kind == "truncated"
    assert str(info.value).startswith("bad")
    assert isinstance(info.value, DataError)


def test_text_with_an_image_name_is_not_an_image(tmp_path):
    fake = tmp_path / "scan.png"
    fake.write_text("patient list, not a picture")
    with pytest.raises(ImageReadError) as info:
        load_image(fake)
    assert info.value.kind == "not_image"
    assert "scan.png" in str(info.value)


def test_corrupt_image_data_is_unreadable(tmp_path, write_image):
    path = write_image(tmp_path / "x.png", size=(64, 64))
    data = bytearray(path.read_bytes())
    for i in range(60, len(data) - 20):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert info.value.kind in ("unreadable", "truncated")


def test_decompression_bomb_is_refused(tmp_path, write_image, monkeypatch):
    path = write_image(tmp_path / "big.png", size=(64, 64))
    # Between MAX_IMAGE_PIXELS and twice that Pillow would only warn; the warning must be an error here.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    with pytest.raises(ImageReadError, match="too large") as info:
        load_image(path)
    assert info.value.kind == "unreadable"


def test_missing_file_is_unreadable(tmp_path):
    with pytest.raises(ImageReadError) as info:
        load_image(tmp_path / "nope.png")
    assert info.value.kind == "unreadable"


# --- DICOM ------------------------------------------------------------------------------------------

def test_dicom_monochrome_8bit(tmp_path, write_dicom):
    grey = np.arange(32 * 40, dtype=np.uint32).reshape(32, 40) % 256
    path = write_dicom(tmp_path / "m8.dcm", grey.astype(np.uint8))
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (32, 40, 3)
    assert np.array_equal(pixels[..., 0], grey) and np.array_equal(pixels[..., 1], grey)


def test_dicom_monochrome1_is_inverted(tmp_path, write_dicom):
    grey = np.full((16, 16), 10, np.uint8)
    grey[:8] = 250
    pixels = np.asarray(load_image(write_dicom(tmp_path / "m1.dcm", grey, photometric="MONOCHROME1")))
    assert pixels[0, 0, 0] == 5 and pixels[15, 15, 0] == 245


def test_dicom_16bit_uses_window_center_and_width(tmp_path, write_dicom):
    values = np.zeros((16, 16), np.uint16)
    values[0] = 500  # below the window -> black
    values[1] = 1000  # at the centre -> mid grey
    values[2] = 3000  # above the window -> white
    path = write_dicom(tmp_path / "w.dcm", values, WindowCenter=1000, WindowWidth=800)
    pixels = np.asarray(load_image(path))[..., 0]
    assert pixels[0, 0] == 0 and pixels[2, 0] == 255
    assert abs(int(pixels[1, 0]) - 128) <= 1


def test_dicom_16bit_rescale_then_window(tmp_path, write_dicom):
    values = np.full((8, 8), 1024, np.uint16)
    values[0] = 0
    # Stored 1024 * 1 - 1024 = 0 in rescaled units: the centre of the window.
    path = write_dicom(tmp_path / "r.dcm", values, RescaleSlope=1, RescaleIntercept=-1024,
                       WindowCenter=0, WindowWidth=400)
    pixels = np.asarray(load_image(path))[..., 0]
    assert abs(int(pixels[4, 4]) - 128) <= 1 and pixels[0, 0] == 0


def test_dicom_16bit_without_window_uses_min_max(tmp_path, write_dicom):
    values = np.linspace(300, 4000, 64).reshape(8, 8).astype(np.uint16)
    pixels = np.asarray(load_image(write_dicom(tmp_path / "mm.dcm", values)))[..., 0]
    assert pixels.min() == 0 and pixels.max() == 255
    assert np.all(np.diff(pixels.ravel().astype(int)) >= 0)


def test_dicom_rgb(tmp_path, write_dicom):
    rgb = np.zeros((12, 20, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 90, 30
    pixels = np.asarray(load_image(write_dicom(tmp_path / "rgb.dcm", rgb)))
    assert pixels.shape == (12, 20, 3) and pixels[5, 5].tolist() == [200, 90, 30]


def test_dicom_jpeg_baseline(tmp_path, write_dicom, gradient):
    rgb = gradient(48, 32, seed=3)
    pixels = np.asarray(load_image(write_dicom(tmp_path / "j.dcm", rgb, jpeg=True))).astype(int)
    assert pixels.shape == (32, 48, 3)
    assert np.abs(pixels - rgb.astype(int)).mean() < 4  # lossy, but the same picture


def test_extensionless_dicom_is_detected(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "IM0001", np.full((8, 8), 77, np.uint8))
    other = tmp_path / "README"
    other.write_text("x" * 200)
    assert is_image_file(path) and not is_image_file(other)
    assert np.asarray(load_image(path))[0, 0, 0] == 77


def test_multiframe_dicom_decodes_every_frame(tmp_path, write_dicom):
    from core.data.images import load_frames

    path = write_dicom(tmp_path / "cine.dcm", np.full((8, 8), 40, np.uint8), frames=3)
    frames = load_frames(path)
    assert len(frames) == 3 and all(np.asarray(f)[0, 0, 0] == 40 for f in frames)
    assert np.asarray(load_image(path, frame=2))[0, 0, 0] == 40


def test_truncated_dicom(tmp_path, write_dicom):
    path = write_dicom(tmp_path / "t.dcm", np.zeros((32, 32), np.uint16))
    data = path.read_bytes()
    path.write_bytes(data[:-600])
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert info.value.kind == "truncated"


def test_truncated_jpeg_dicom(tmp_path, write_dicom, gradient):
    path = write_dicom(tmp_path / "tj.dcm", gradient(64, 64), jpeg=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 400])
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert info.value.kind == "truncated"


def test_dicom_without_pixels_is_not_an_image(tmp_path, write_dicom):
    import pydicom

    path = write_dicom(tmp_path / "sr.dcm", np.zeros((8, 8), np.uint8))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="no image") as info:
        load_image(path)
    assert info.value.kind == "not_image"


def test_garbage_with_dcm_suffix(tmp_path):
    path = tmp_path / "junk.dcm"
    path.write_bytes(b"\x00" * 50)
    with pytest.raises(ImageReadError) as info:
        load_image(path)
    assert info.value.kind in ("not_image", "unreadable", "truncated")
