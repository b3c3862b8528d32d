"""Decode one image file (PNG, JPEG, BMP, TIFF or DICOM) into an RGB Pillow image.

Every file is fully decoded here, so that truncated or corrupt files fail now, with a reason, and not
halfway through training. Decoding never trusts the file: Pillow's decompression-bomb warning is an
error, DICOM pixel counts are checked before the pixels are read, and nothing is ever unpickled.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"})
"""Suffixes read as images; files without a suffix are read when they carry the DICOM preamble."""

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"

# Kinds of decoding failure, as reported by validation.
UNREADABLE = "unreadable"
TRUNCATED = "truncated"
NOT_IMAGE = "not_image"


class ImageReadError(DataError):
    """An image file could not be decoded; ``kind`` says why (unreadable, truncated or not_image)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def has_dicom_preamble(path: Path) -> bool:
    """True when the file holds the 'DICM' marker after the 128-byte preamble (DICOM Part 10)."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC))
    except OSError:
        return False
    return head[_DICOM_MAGIC_OFFSET:] == _DICOM_MAGIC


def is_image_file(path: Path) -> bool:
    """Whether ``path`` should be read as an image: a known suffix, or an extensionless DICOM file."""
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return True
    return suffix == "" and has_dicom_preamble(path)


def load_image(path: Path) -> Image.Image:
    """Read and fully decode ``path`` into an RGB image; ImageReadError (a DataError) names the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{path.name}: cannot be read ({exc.strerror or exc}); check the file's permissions.",
                             UNREADABLE) from exc
    return decode_image(data, path.name)


def decode_image(data: bytes, name: str) -> Image.Image:
    """Decode the bytes of an image file called ``name`` (used in error messages) into RGB."""
    if data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)] == _DICOM_MAGIC \
            or name.lower().endswith(".dcm"):
        return _decode_dicom(data, name)
    return _decode_pillow(data, name)


def _decode_pillow(data: bytes, name: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a hostile file is refused at once.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.width * image.height > (Image.MAX_IMAGE_PIXELS or 0) > 0:
                    raise Image.DecompressionBombError("too many pixels")
                # A full load (never LOAD_TRUNCATED_IMAGES) is what catches truncated files.
                image.load()
                image = ImageOps.exif_transpose(image)
                return _to_rgb(image)
    except UnidentifiedImageError as exc:
        raise ImageReadError(f"{name}: not an image file (expected PNG, JPEG, BMP, TIFF or DICOM).",
                             NOT_IMAGE) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageReadError(
            f"{name}: image is too large to decode safely (more than {Image.MAX_IMAGE_PIXELS} pixels); "
            "downscale it first.", UNREADABLE) from exc
    except OSError as exc:
        if "truncated" in str(exc).lower():
            raise ImageReadError(f"{name}: file is truncated (incomplete copy?); copy it again.",
                                 TRUNCATED) from exc
        raise ImageReadError(f"{name}: image data is corrupt ({exc}); re-export the image.", UNREADABLE) from exc
    except Exception as exc:  # hostile files make decoders raise anything; it must become a reason
        raise ImageReadError(f"{name}: image data is corrupt ({type(exc).__name__}: {exc}); re-export the image.",
                             UNREADABLE) from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB 8-bit; high-bit-depth greyscale is stretched to its own range instead of being clipped."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return _grey_to_rgb(_stretch(np.asarray(image, dtype=np.float64)))
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "P", "PA"):
        # Transparent areas become black, the usual background of fundus and radiology images.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _stretch(values: np.ndarray, low: float | None = None, high: float | None = None) -> np.ndarray:
    """Map [low, high] (default: the array's min and max) linearly onto 0..255 as uint8."""
    low = float(values.min()) if low is None else low
    high = float(values.max()) if high is None else high
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values - low) * (255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _grey_to_rgb(grey: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(grey), mode="L").convert("RGB")


def _decode_dicom(data: bytes, name: str) -> Image.Image:
    import pydicom  # lazy: only DICOM collections pay for the import
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = pydicom.dcmread(io.BytesIO(data))
    except InvalidDicomError as exc:
        raise ImageReadError(f"{name}: not a DICOM file (no DICM marker).", NOT_IMAGE) from exc
    except Exception as exc:
        raise ImageReadError(f"{name}: DICOM header is corrupt or incomplete ({exc}); export the file again.",
                             TRUNCATED if isinstance(exc, EOFError) else UNREADABLE) from exc
    ended_early = any("end of file" in str(w.message).lower() for w in caught)

    if "PixelData" not in dataset:
        if ended_early:
            raise ImageReadError(f"{name}: DICOM file is truncated (incomplete copy?); copy it again.", TRUNCATED)
        raise ImageReadError(f"{name}: DICOM file holds no image (no Pixel Data); it may be a report or "
                             "structured document.", NOT_IMAGE)
    try:
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples = int(dataset.get("SamplesPerPixel", 1))
        photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    except (AttributeError, ValueError, TypeError) as exc:
        raise ImageReadError(f"{name}: DICOM image attributes are missing or invalid ({exc}).", UNREADABLE) from exc
    if frames > 1:
        raise ImageReadError(f"{name}: multi-frame DICOM ({frames} frames) is not supported; export one frame "
                             "per file.", UNREADABLE)
    if rows * columns > (Image.MAX_IMAGE_PIXELS or 0) > 0:
        raise ImageReadError(f"{name}: image is too large to decode safely ({rows}x{columns}); downscale it first.",
                             UNREADABLE)
    if samples not in (1, 3):
        raise ImageReadError(f"{name}: DICOM with {samples} samples per pixel is not supported.", UNREADABLE)

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = dataset.pixel_array
    except Exception as exc:
        message = str(exc)
        if "less than expected" in message or "truncated" in message.lower() or ended_early:
            raise ImageReadError(f"{name}: DICOM pixel data is truncated (incomplete copy?); copy it again.",
                                 TRUNCATED) from exc
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", None) or str(syntax or "unknown")
        raise ImageReadError(f"{name}: DICOM pixel data cannot be decoded ({syntax_name}: {message}); export it "
                             "uncompressed or as JPEG baseline.", UNREADABLE) from exc

    try:
        return _dicom_pixels_to_rgb(pixels, dataset, photometric)
    except ImageReadError:
        raise
    except Exception as exc:
        raise ImageReadError(f"{name}: DICOM pixel values cannot be displayed ({exc}).", UNREADABLE) from exc


def _dicom_pixels_to_rgb(pixels: np.ndarray, dataset, photometric: str) -> Image.Image:
    from pydicom.pixels import apply_color_lut, apply_modality_lut

    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
        photometric = "RGB"
    if pixels.ndim == 3:
        # Colour: pydicom already converted YBR to RGB; deeper-than-8-bit colour is scaled by its bit depth.
        bits = int(dataset.get("BitsStored", 8) or 8)
        if pixels.dtype != np.uint8:
            pixels = _stretch(pixels.astype(np.float64), 0.0, float(2 ** bits - 1))
        return Image.fromarray(np.ascontiguousarray(pixels[..., :3]), mode="RGB")
    if pixels.ndim != 2:
        raise ImageReadError("unexpected DICOM pixel layout", UNREADABLE)

    values = apply_modality_lut(pixels, dataset).astype(np.float64)  # RescaleSlope/Intercept or Modality LUT
    center, width = _first(dataset.get("WindowCenter")), _first(dataset.get("WindowWidth"))
    bits = int(dataset.get("BitsStored", 8) or 8)
    rescaled = "RescaleSlope" in dataset or "RescaleIntercept" in dataset or "ModalityLUTSequence" in dataset
    if center is not None and width is not None and width > 0:
        grey = _stretch(values, center - width / 2.0, center + width / 2.0)
    elif bits <= 8 and not rescaled and pixels.dtype == np.uint8:
        grey = pixels.astype(np.uint8)
    else:
        grey = _stretch(values)
    if photometric == "MONOCHROME1":  # MONOCHROME1 shows low values as white
        grey = 255 - grey
    return _grey_to_rgb(grey)


def _first(value) -> float | None:
    """WindowCenter/WindowWidth may hold several values (alternative views); the first is the default."""
    if value is None:
        return None
    from pydicom.multival import MultiValue

    try:
        if isinstance(value, MultiValue | list | tuple):
            value = value[0]
        return float(value)
    except (TypeError, ValueError, IndexError):
        return None
