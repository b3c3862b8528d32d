"""Decode image files (PNG, JPEG, BMP, TIFF or DICOM) into RGB Pillow images, one frame at a time.

Every file is fully decoded here, so that truncated or corrupt files fail now, with a reason, and not
halfway through training. Decoding never trusts the file: Pillow's decompression-bomb warning is an
error, DICOM pixel counts and frame counts are checked before the pixels are read, and nothing is ever
unpickled.

DICOM: every transfer syntax pydicom decodes with the bundled plugins (pylibjpeg with libjpeg, openjpeg
and RLE; pyjpegls), multi-frame files (each frame is one image), and the pixel semantics a viewer would
apply: photometric interpretation (MONOCHROME1/2, RGB, YBR_*, PALETTE COLOR), modality LUT, then the VOI
LUT or the window centre/width for deeper-than-8-bit data. JPEG photographs are turned upright by their
EXIF orientation.

``open_image`` gives an ``ImageFile``: its ``info`` (size, frames, laterality, acquisition device, field of
view) from the header alone, and ``frame(i)`` for the pixels.

Why one module (about 530 lines): every decoder path (Pillow, DICOM with each transfer syntax and
photometric interpretation, frames, size checks against decompression bombs) meets here, behind one
error kind per failure.
"""

from __future__ import annotations

import io
import math
import re
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from core.errors import DataError

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm"})
"""Suffixes read as images; files without a suffix are read when they carry the DICOM preamble."""

MAX_FRAMES_PER_FILE = 64
"""Frames a multi-frame file may hold. Each frame is a sample, so a cine loop of hundreds of frames would
outweigh every other image of the collection (and the same eye many times over): such a file is refused
with a message saying what to export instead. Stereo pairs and short series stay far below it."""

_DICOM_MAGIC_OFFSET = 128
_DICOM_MAGIC = b"DICM"

# Kinds of decoding failure, as reported by validation.
UNREADABLE = "unreadable"
TRUNCATED = "truncated"
NOT_IMAGE = "not_image"
TOO_MANY_FRAMES = "too_many_frames"

LEFT, RIGHT = "L", "R"

# EyePACS and most camera exports name files like 10_left.jpeg / 10_right.jpeg.
_LATERALITY_IN_NAME = re.compile(r"(?:^|[_\-. ])(left|right)$", re.IGNORECASE)


class ImageReadError(DataError):
    """An image file could not be decoded; ``kind`` says why (unreadable, truncated, not_image,
    too_many_frames)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class ImageInfo:
    """What a file's header says about its images; None where the file does not say."""

    width: int
    height: int
    frames: int = 1
    format: str = ""
    """DICOM, JPEG, PNG, ..."""
    laterality: str | None = None
    """"L" or "R": the DICOM image (or series, or frame) laterality, else a _left/_right file name."""
    device: str | None = None
    """Manufacturer and model (DICOM, or a JPEG's EXIF Make and Model)."""
    field_of_view: str | None = None
    """The photograph's horizontal field of view (ophthalmic DICOM), e.g. "45 deg"."""
    modality: str | None = None
    photometric: str | None = None
    transfer_syntax: str | None = None
    bits_stored: int | None = None

    @property
    def resolution(self) -> str:
        return f"{self.width}x{self.height}"


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


def laterality_from_name(name: str) -> str | None:
    """"L"/"R" for file names ending in left/right (10_left.jpeg), else None."""
    match = _LATERALITY_IN_NAME.search(Path(name).stem)
    if match is None:
        return None
    return LEFT if match.group(1).lower() == "left" else RIGHT


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageReadError(f"{Path(path).name}: cannot be read ({exc.strerror or exc}); check the file's "
                             "permissions.", UNREADABLE) from exc


def load_image(path: Path, frame: int = 0) -> Image.Image:
    """Read and fully decode one frame of ``path`` into RGB; ImageReadError (a DataError) names the file."""
    path = Path(path)
    return decode_image(_read_bytes(path), path.name, frame)


def load_frames(path: Path, *, max_frames: int = MAX_FRAMES_PER_FILE) -> list[Image.Image]:
    """Every frame of ``path`` as RGB (one image for anything but a multi-frame DICOM)."""
    return list(open_image_file(path, max_frames=max_frames).frames())


def read_image_info(path: Path, *, max_frames: int = MAX_FRAMES_PER_FILE) -> ImageInfo:
    """The header's facts about ``path`` (size, frames, laterality, device) without decoding pixels."""
    return open_image_file(path, max_frames=max_frames).info


def open_image_file(path: Path, *, max_frames: int = MAX_FRAMES_PER_FILE) -> ImageFile:
    """Read ``path`` and parse its header: ``.info``, then ``.frame(i)`` decodes frame i."""
    path = Path(path)
    return open_image(_read_bytes(path), path.name, max_frames=max_frames)


def decode_image(data: bytes, name: str, frame: int = 0) -> Image.Image:
    """Decode frame ``frame`` of the bytes of an image file called ``name`` (used in messages) into RGB."""
    return open_image(data, name).frame(frame)


def is_dicom_bytes(data: bytes, name: str) -> bool:
    return (data[_DICOM_MAGIC_OFFSET:_DICOM_MAGIC_OFFSET + len(_DICOM_MAGIC)] == _DICOM_MAGIC
            or name.lower().endswith(".dcm"))


def open_image(data: bytes, name: str, *, max_frames: int = MAX_FRAMES_PER_FILE) -> ImageFile:
    """Parse the header of an image file's bytes; ImageReadError when it is not a usable image."""
    if is_dicom_bytes(data, name):
        return _DicomFile(data, name, max_frames)
    return _PillowFile(data, name)


class ImageFile:
    """One opened image file: ``info`` from its header, ``frame(i)`` decodes frame i (0-based) to RGB."""

    name: str
    info: ImageInfo

    def frame(self, index: int = 0) -> Image.Image:
        raise NotImplementedError

    def frames(self) -> Iterator[Image.Image]:
        """Each frame in turn (decoded one at a time, so a long series never sits in memory at once)."""
        for index in range(self.info.frames):
            yield self.frame(index)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.info.frames:
            raise ImageReadError(f"{self.name}: has {self.info.frames} frame(s), so frame {index + 1} does not "
                                 "exist; list the file again.", UNREADABLE)


# --- photographs (Pillow) ------------------------------------------------------------------------------

_EXIF_MAKE, _EXIF_MODEL = 0x010F, 0x0110


class _PillowFile(ImageFile):
    def __init__(self, data: bytes, name: str) -> None:
        self.name = name
        self._data = data
        with self._guard():
            with Image.open(io.BytesIO(data)) as image:
                self._check_size(image)
                width, height = image.size
                device = None
                try:
                    exif = image.getexif()
                    device = _join(exif.get(_EXIF_MAKE), exif.get(_EXIF_MODEL))
                    if exif.get(0x0112) in (5, 6, 7, 8):  # rotated by 90 degrees: upright is the other way
                        width, height = height, width
                except Exception:  # noqa: BLE001 - a broken EXIF block only loses the device name
                    device = None
                self.info = ImageInfo(width=width, height=height, frames=1, format=image.format or "",
                                      laterality=laterality_from_name(name), device=device)

    def frame(self, index: int = 0) -> Image.Image:
        self._check_index(index)
        with self._guard():
            with Image.open(io.BytesIO(self._data)) as image:
                self._check_size(image)
                # A full load (never LOAD_TRUNCATED_IMAGES) is what catches truncated files.
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))

    @staticmethod
    def _check_size(image: Image.Image) -> None:
        if image.width * image.height > (Image.MAX_IMAGE_PIXELS or 0) > 0:
            raise Image.DecompressionBombError("too many pixels")

    def _guard(self) -> _pillow_errors:
        return _pillow_errors(self.name)


class _pillow_errors:  # noqa: N801 - used as a context manager
    """Pillow's exceptions (and whatever a hostile file makes it raise) as ImageReadError with a reason."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._warnings = warnings.catch_warnings()

    def __enter__(self) -> None:
        self._warnings.__enter__()
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a hostile file is refused at once.
        warnings.simplefilter("error", Image.DecompressionBombWarning)

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> Literal[False]:
        self._warnings.__exit__(kind, exc, traceback)
        if exc is None or isinstance(exc, ImageReadError):
            return False
        name = self.name
        if isinstance(exc, UnidentifiedImageError):
            raise ImageReadError(f"{name}: not an image file (expected PNG, JPEG, BMP, TIFF or DICOM).",
                                 NOT_IMAGE) from exc
        if isinstance(exc, Image.DecompressionBombError | Image.DecompressionBombWarning):
            raise ImageReadError(
                f"{name}: image is too large to decode safely (more than {Image.MAX_IMAGE_PIXELS} pixels); "
                "downscale it first.", UNREADABLE) from exc
        if isinstance(exc, OSError):
            if "truncated" in str(exc).lower():
                raise ImageReadError(f"{name}: file is truncated (incomplete copy?); copy it again.",
                                     TRUNCATED) from exc
            raise ImageReadError(f"{name}: image data is corrupt ({exc}); re-export the image.",
                                 UNREADABLE) from exc
        if isinstance(exc, Exception):  # hostile files make decoders raise anything; it must become a reason
            raise ImageReadError(f"{name}: image data is corrupt ({type(exc).__name__}: {exc}); re-export the "
                                 "image.", UNREADABLE) from exc
        return False


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


def _join(*parts: Any) -> str | None:
    words = [_clean(p) for p in parts if p is not None]
    words = [w for w in words if w]
    # Many cameras repeat the make inside the model ("Canon", "Canon CR-2").
    if len(words) == 2 and words[1].lower().startswith(words[0].lower()):
        words = words[1:]
    return " ".join(words) or None


def _clean(value: Any) -> str:
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    text = "".join(ch if ch.isprintable() else " " for ch in str(value)).strip()
    return " ".join(text.split())[:80]


# --- DICOM --------------------------------------------------------------------------------------------

class _DicomFile(ImageFile):
    def __init__(self, data: bytes, name: str, max_frames: int) -> None:
        import pydicom  # lazy: only DICOM collections pay for the import
        from pydicom.errors import InvalidDicomError

        self.name = name
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    dataset = pydicom.dcmread(io.BytesIO(data))
                except InvalidDicomError:
                    if not name.lower().endswith(".dcm"):
                        raise
                    # Older archives export .dcm files without the Part 10 preamble; read them as a bare
                    # data set (what follows must still hold an image, or the file is refused below).
                    dataset = pydicom.dcmread(io.BytesIO(data), force=True)
                    if "PixelData" not in dataset or "Rows" not in dataset:
                        raise
                    _name_the_encoding(dataset)
        except InvalidDicomError as exc:
            raise ImageReadError(f"{name}: not a DICOM file (no DICM marker).", NOT_IMAGE) from exc
        except Exception as exc:
            raise ImageReadError(f"{name}: DICOM header is corrupt or incomplete ({_one_line(exc)}); export the file "
                                 "again.",
                                 TRUNCATED if isinstance(exc, EOFError) else UNREADABLE) from exc
        self._ended_early = any("end of file" in str(w.message).lower() for w in caught)
        self._dataset = dataset
        if "PixelData" not in dataset:
            if self._ended_early:
                raise ImageReadError(f"{name}: DICOM file is truncated (incomplete copy?); copy it again.",
                                     TRUNCATED)
            raise ImageReadError(f"{name}: DICOM file holds no image (no Pixel Data); it may be a report or "
                                 "structured document.", NOT_IMAGE)
        try:
            frames = int(dataset.get("NumberOfFrames", 1) or 1)
            rows, columns = int(dataset.Rows), int(dataset.Columns)
            samples = int(dataset.get("SamplesPerPixel", 1))
            self._photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            bits = int(dataset.get("BitsStored", 8) or 8)
        except Exception as exc:  # a hostile header fails in many ways (an unknown VR: NotImplementedError)
            raise ImageReadError(f"{name}: DICOM image attributes are missing or invalid ({_one_line(exc)}); "
                                 "export the file again.", UNREADABLE) from exc
        if rows < 1 or columns < 1 or frames < 1:
            raise ImageReadError(f"{name}: DICOM image has no pixels ({rows}x{columns}, {frames} frames).",
                                 UNREADABLE)
        if rows * columns > (Image.MAX_IMAGE_PIXELS or 0) > 0:
            raise ImageReadError(f"{name}: image is too large to decode safely ({rows}x{columns}); downscale it "
                                 "first.", UNREADABLE)
        if frames > max_frames:
            raise ImageReadError(f"{name}: {frames} frames, more than the {max_frames} a file may hold (each frame "
                                 "is one image); export the frames you need, e.g. the stereo pair, as a shorter "
                                 "series.", TOO_MANY_FRAMES)
        if samples not in (1, 3):
            raise ImageReadError(f"{name}: DICOM with {samples} samples per pixel is not supported.", UNREADABLE)
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is not None and not syntax.is_transfer_syntax:
            # pydicom knows no such encoding (a newer one such as JPEG XL, or a damaged header): its pixel
            # data cannot be read, and asking pydicom whether it is compressed raises ValueError.
            raise ImageReadError(f"{name}: its transfer syntax {_clean(str(syntax))[:64]!r} is not one this Dopamine "
                                 "can decode; export the file uncompressed, as JPEG or as JPEG 2000.", UNREADABLE)
        self.info = ImageInfo(
            width=columns, height=rows, frames=frames, format="DICOM",
            laterality=dicom_laterality(dataset) or laterality_from_name(name),
            device=_join(_get(dataset, "Manufacturer"), _get(dataset, "ManufacturerModelName")),
            field_of_view=dicom_field_of_view(dataset), modality=_clean(_get(dataset, "Modality") or "") or None,
            photometric=self._photometric, transfer_syntax=_syntax_name(dataset), bits_stored=bits,
        )

    def frame(self, index: int = 0) -> Image.Image:
        self._check_index(index)
        from pydicom.pixels import pixel_array

        name, dataset = self.name, self._dataset
        self._check_codestream(index)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                # One frame only: a compressed series is never decoded (or held) whole.
                pixels = pixel_array(dataset, index=index if self.info.frames > 1 else None)
        except BaseException as exc:
            # A Rust decoder (pylibjpeg-rle) panics on some hostile data, and pyo3 raises its panic as a
            # BaseException: it must become a reason like any decoder error, not escape every handler.
            if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
                raise
            message = str(exc)
            if "less than expected" in message or "truncated" in message.lower() or self._ended_early:
                raise ImageReadError(f"{name}: DICOM pixel data is truncated (incomplete copy?); copy it again.",
                                     TRUNCATED) from exc
            detail = " ".join(message.split())[:400] or type(exc).__name__
            raise ImageReadError(f"{name}: DICOM pixel data cannot be decoded ({self.info.transfer_syntax}: "
                                 f"{detail}); export it uncompressed or with another compression.",
                                 UNREADABLE) from exc
        try:
            return dicom_pixels_to_rgb(pixels, dataset, self._photometric)
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"{name}: DICOM pixel values cannot be displayed ({exc}).", UNREADABLE) from exc

    def _check_codestream(self, index: int) -> None:
        """A compressed frame's own header must give the image size the DICOM header gives.

        The decoders size their buffers from the codestream, not from Rows and Columns: a JPEG Lossless
        frame whose SOF claims 60000 x 60000 made libjpeg allocate 14 GB and work for 95 s before failing.
        The DICOM header's size has already passed the pixel limit, so holding the codestream to it bounds
        what any decoder allocates.
        """
        syntax = getattr(getattr(self._dataset, "file_meta", None), "TransferSyntaxUID", None)
        if syntax is None or not syntax.is_encapsulated or syntax == "1.2.840.10008.1.2.5":  # RLE: sized by header
            return
        from pydicom.encaps import get_frame

        try:
            data = get_frame(self._dataset.PixelData, index, number_of_frames=self.info.frames)
        except Exception:  # noqa: BLE001 - a broken fragment table is the decoder's to report
            return
        size = codestream_size(data)
        if size is not None and size != (self.info.width, self.info.height):
            where = f"frame {index + 1}" if self.info.frames > 1 else "the image"
            raise ImageReadError(
                f"{self.name}: the compressed data of {where} says {size[0]}x{size[1]} pixels but the DICOM header "
                f"says {self.info.width}x{self.info.height}; the file is damaged or hostile. Export it again.",
                UNREADABLE)


def _one_line(exc: BaseException) -> str:
    """A library's error message as one short line (some span several)."""
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def _name_the_encoding(dataset) -> None:
    """A bare data set (no file meta) was read in some uncompressed encoding; name it, so that its pixel
    data can be decoded (without file meta nothing else can have been used)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return
    implicit, little = dataset.original_encoding
    syntax = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    dataset.file_meta = meta if meta is not None else FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax


# JPEG start-of-frame markers (T.81 B.1.1.3: C0-CF except DHT C4, JPG C8, DAC CC) and JPEG-LS SOF55.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC} | {0xF7}


def codestream_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG / JPEG-LS SOF or a JPEG 2000 SIZ marker; (0, 0) when the stream is not
    one of those but looks like one; None when it is not a JPEG-family stream at all."""
    siz = data.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K: SOC then SIZ (also inside a JP2 box)
    if siz >= 0:
        if len(data) < siz + 4 + 2 + 2 + 16:
            return (0, 0)
        x, y, x0, y0 = struct.unpack_from(">IIII", data, siz + 8)
        return (max(0, x - x0), max(0, y - y0))
    if not data.startswith(b"\xff\xd8"):
        return None
    at = 2
    while at + 4 <= len(data):
        if data[at] != 0xFF:
            return (0, 0)
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if marker in _JPEG_SOF:
            if at + 9 > len(data):
                return (0, 0)
            height, width = struct.unpack_from(">HH", data, at + 5)
            return (width, height)
        if marker in (0xDA, 0xD9) or length < 2:  # scan or end before any frame header
            return (0, 0)
        at += 2 + length
    return (0, 0)


def _get(dataset, keyword: str) -> Any:
    try:
        value = dataset.get(keyword)
    except Exception:  # noqa: BLE001 - one malformed element must not make the image unusable
        return None
    return None if value in (None, "") else value


def _syntax_name(dataset) -> str:
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    return getattr(syntax, "name", None) or str(syntax or "unknown transfer syntax")


def _normal_laterality(value: Any) -> str | None:
    text = _clean(value or "").upper()
    return text if text in (LEFT, RIGHT) else None


def dicom_laterality(dataset) -> str | None:
    """"L"/"R" from Image Laterality, else (Series) Laterality, else the first frame's Frame Laterality."""
    for keyword in ("ImageLaterality", "Laterality"):
        found = _normal_laterality(_get(dataset, keyword))
        if found:
            return found
    for sequence in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        try:
            groups = dataset.get(sequence) or []
            item = groups[0] if len(groups) else None
            anatomy = item.get("FrameAnatomySequence") if item is not None else None
            if anatomy:
                found = _normal_laterality(anatomy[0].get("FrameLaterality"))
                if found:
                    return found
        except Exception:  # noqa: BLE001 - optional metadata; a malformed sequence is ignored
            continue
    return None


def dicom_field_of_view(dataset) -> str | None:
    """The ophthalmic photograph's horizontal field of view in degrees, when the header has it."""
    value = _get(dataset, "HorizontalFieldOfView")
    try:
        degrees = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    if degrees is None or not math.isfinite(degrees) or degrees <= 0:
        return None
    return f"{degrees:g} deg"


def dicom_pixels_to_rgb(pixels: np.ndarray, dataset, photometric: str) -> Image.Image:
    """One decoded frame to 8-bit RGB as a viewer would show it (pydicom already turned YBR into RGB and
    honoured the planar configuration)."""
    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(pixels, dataset)
    if pixels.ndim == 3:
        if pixels.shape[-1] != 3:
            raise ImageReadError("unexpected DICOM pixel layout", UNREADABLE)
        # Deeper-than-8-bit colour is scaled by its bit depth (not its own range: that would change colours).
        if pixels.dtype != np.uint8:
            bits = min(int(dataset.get("BitsStored", 8) or 8), 8 * pixels.dtype.itemsize)
            pixels = _stretch(pixels.astype(np.float64), 0.0, float(2 ** bits - 1))
        return Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    if pixels.ndim != 2:
        raise ImageReadError("unexpected DICOM pixel layout", UNREADABLE)
    grey = _grey_for_display(pixels, dataset)
    if photometric == "MONOCHROME1":  # MONOCHROME1 shows low values as white
        grey = 255 - grey
    return _grey_to_rgb(grey)


def _grey_for_display(pixels: np.ndarray, dataset) -> np.ndarray:
    """Modality LUT (rescale), then the VOI LUT or the first window; else 8-bit data as it is, or the
    image's own range."""
    from pydicom.pixels import apply_modality_lut

    rescaled = "RescaleSlope" in dataset or "RescaleIntercept" in dataset or "ModalityLUTSequence" in dataset
    with np.errstate(all="ignore"):  # a hostile slope (1e308, nan) is refused just below, not warned about
        values = apply_modality_lut(pixels, dataset).astype(np.float64) if rescaled else pixels.astype(np.float64)
    if not np.isfinite(values).all():
        raise ImageReadError("DICOM rescale slope or intercept turn the pixels into values that are not finite "
                             "numbers; export the image again.", UNREADABLE)
    voi = _voi_lut(values, dataset)
    if voi is not None:
        return voi
    center, width = _first(_get(dataset, "WindowCenter")), _first(_get(dataset, "WindowWidth"))
    if center is not None and width is not None and width > 0:
        function = str(_get(dataset, "VOILUTFunction") or "LINEAR").strip().upper()
        return _window(values, center, width, function)
    if not rescaled and pixels.dtype == np.uint8:
        return pixels
    return _stretch(values)


def _voi_lut(values: np.ndarray, dataset) -> np.ndarray | None:
    """The first VOI LUT of the VOI LUT Sequence, its output stretched over the LUT's own range."""
    if not _get(dataset, "VOILUTSequence"):
        return None
    from pydicom.pixels import apply_voi

    try:
        entries, first_mapped = (int(v) for v in dataset.VOILUTSequence[0].LUTDescriptor[:2])
        table = apply_voi(np.arange(first_mapped, first_mapped + (entries or 65536), dtype=np.int64), dataset)
        mapped = apply_voi(np.rint(values).astype(np.int64), dataset)
    except Exception:  # noqa: BLE001 - a malformed LUT falls back to the window or the image's range
        return None
    return _stretch(mapped.astype(np.float64), float(table.min()), float(table.max()))


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2: LINEAR (the default), LINEAR_EXACT and SIGMOID, onto 0..255."""
    if function == "SIGMOID":
        out = 255.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        out = (values - (center - width / 2.0)) / width * 255.0
    else:
        if width < 1:
            width = 1.0
        out = ((values - (center - 0.5)) / (width - 1.0 if width > 1 else 1.0) + 0.5) * 255.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _palette_to_rgb(pixels: np.ndarray, dataset) -> Image.Image:
    from pydicom.pixels import apply_color_lut

    colours = apply_color_lut(pixels, dataset)
    if colours.dtype != np.uint8:
        # 16-bit palette entries span 0..65535; a few writers put 8-bit values in 16-bit entries.
        top = 255.0 if int(colours.max()) <= 255 else 65535.0
        colours = _stretch(colours.astype(np.float64), 0.0, top)
    return Image.fromarray(np.ascontiguousarray(colours[..., :3]), mode="RGB")


def _first(value) -> float | None:
    """WindowCenter/WindowWidth may hold several values (alternative views); the first is the default."""
    if value is None:
        return None
    from pydicom.multival import MultiValue

    try:
        if isinstance(value, MultiValue | list | tuple):
            value = value[0]
        result = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return result if math.isfinite(result) else None
