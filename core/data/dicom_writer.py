"""Write DICOM files in every transfer syntax Dopamine reads: for the tests, the SYNTHETIC DICOM demo
(``dopamine demo-data --dicom``) and the bundle's smoke test, which must decode each kind.

Encoders: pydicom itself (native, deflated, RLE), Pillow (JPEG baseline), pyjpegls (JPEG-LS),
pylibjpeg-openjpeg (JPEG 2000) and, since no installed package encodes JPEG Lossless (process 14),
a small encoder here (``jpeg_lossless``), written from ITU-T T.81 Annex H.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.errors import DataError

# Short names for the transfer syntaxes (the ones a hospital's archive and fundus cameras export).
TRANSFER_SYNTAXES: dict[str, str] = {
    "implicit": "1.2.840.10008.1.2",
    "explicit": "1.2.840.10008.1.2.1",
    "deflated": "1.2.840.10008.1.2.1.99",
    "big_endian": "1.2.840.10008.1.2.2",
    "jpeg_baseline": "1.2.840.10008.1.2.4.50",
    "jpeg_lossless": "1.2.840.10008.1.2.4.57",
    "jpeg_lossless_sv1": "1.2.840.10008.1.2.4.70",
    "jpeg_ls": "1.2.840.10008.1.2.4.80",
    "jpeg_ls_near": "1.2.840.10008.1.2.4.81",
    "jpeg2000_lossless": "1.2.840.10008.1.2.4.90",
    "jpeg2000": "1.2.840.10008.1.2.4.91",
    "rle": "1.2.840.10008.1.2.5",
}

OPHTHALMIC_PHOTOGRAPHY_8BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.1"
OPHTHALMIC_PHOTOGRAPHY_16BIT = "1.2.840.10008.5.1.4.1.1.77.1.5.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def write_dicom(
    path: Path,
    frames: np.ndarray | Sequence[np.ndarray],
    *,
    syntax: str = "explicit",
    photometric: str | None = None,
    planar_configuration: int = 0,
    bits_stored: int | None = None,
    palette: np.ndarray | None = None,
    **attributes: Any,
) -> Path:
    """Write ``frames`` (one HxW / HxWx3 array, or a list of them: a multi-frame file) as DICOM.

    ``syntax``: a key of TRANSFER_SYNTAXES. ``photometric``: MONOCHROME2 (grey default), MONOCHROME1,
    RGB (colour default), YBR_FULL, YBR_FULL_422 (native: the RGB input is converted and stored as the
    standard says; JPEG baseline: the usual 4:2:2 JPEG) or PALETTE COLOR (``frames`` are indices into
    ``palette``, uint8 [N, 3] or uint16 [N, 3]). ``attributes`` are set on the dataset as they are
    (Laterality="L", Manufacturer=..., HorizontalFieldOfView=45, WindowCenter=..., ...).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, generate_uid

    if syntax not in TRANSFER_SYNTAXES:
        raise DataError(f"Unknown transfer syntax {syntax!r}; use one of {', '.join(TRANSFER_SYNTAXES)}.")
    arrays = [np.asarray(frames)] if isinstance(frames, np.ndarray) else [np.asarray(f) for f in frames]
    if not arrays or any(a.shape != arrays[0].shape or a.dtype != arrays[0].dtype for a in arrays):
        raise DataError("Frames must be one or more arrays of the same shape and type.")
    stack = np.stack(arrays)
    colour = stack.ndim == 4
    if stack.dtype not in (np.uint8, np.uint16) or stack.ndim not in (3, 4) or (colour and stack.shape[-1] != 3):
        raise DataError("Frames must be uint8 or uint16, shaped HxW (grey) or HxWx3 (colour).")
    bits_allocated = 8 * stack.dtype.itemsize
    bits = bits_stored or bits_allocated
    photometric = (photometric or ("RGB" if colour else "MONOCHROME2")).upper()
    if palette is not None:
        photometric = "PALETTE COLOR"

    meta = FileMetaDataset()
    sop_class = SECONDARY_CAPTURE
    if colour and bits_allocated == 8:
        sop_class = OPHTHALMIC_PHOTOGRAPHY_8BIT
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES["explicit"])
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OP" if sop_class == OPHTHALMIC_PHOTOGRAPHY_8BIT else "OT"
    ds.Rows, ds.Columns = int(stack.shape[1]), int(stack.shape[2])
    ds.SamplesPerPixel = 3 if colour else 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "RGB" if colour else photometric
    if colour:
        ds.PlanarConfiguration = 0
    if len(arrays) > 1:
        ds.NumberOfFrames = len(arrays)
    if palette is not None:
        _set_palette(ds, np.asarray(palette))
    for name, value in attributes.items():
        setattr(ds, name, value)

    uid = UID(TRANSFER_SYNTAXES[syntax])
    if syntax in ("implicit", "explicit", "deflated", "big_endian"):
        data = _native_pixels(ds, stack, photometric, planar_configuration, big_endian=syntax == "big_endian")
        ds.PixelData = data
        ds["PixelData"].VR = "OB" if bits_allocated == 8 else "OW"
        meta.TransferSyntaxUID = uid
    elif syntax == "jpeg_baseline":
        _jpeg_baseline(ds, stack, photometric)
    elif syntax in ("jpeg_lossless", "jpeg_lossless_sv1"):
        from pydicom.encaps import encapsulate

        predictor = 1 if syntax == "jpeg_lossless_sv1" else 6
        ds.PixelData = encapsulate([jpeg_lossless(frame, bits, predictor) for frame in stack])
        ds["PixelData"].VR = "OB"
        meta.TransferSyntaxUID = uid
    else:
        options: dict[str, Any] = {}
        if syntax == "jpeg_ls_near":
            options["jls_error"] = 2
        if syntax == "jpeg2000":
            options["j2k_cr"] = [20]
        if colour and syntax.startswith("jpeg2000"):
            ds.PhotometricInterpretation = "RGB"
            options["use_mct"] = False
        ds.compress(uid, stack[0] if len(arrays) == 1 else stack, generate_instance_uid=False, **options)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def _native_pixels(ds, stack: np.ndarray, photometric: str, planar: int, *, big_endian: bool) -> bytes:
    from pydicom.pixels import convert_color_space

    if stack.ndim == 4:
        ds.PlanarConfiguration = planar
        ds.PhotometricInterpretation = photometric
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            stack = convert_color_space(stack, "RGB", "YBR_FULL", per_frame=True)
        if photometric == "YBR_FULL_422":
            if stack.shape[2] % 2 or stack.dtype != np.uint8:
                raise DataError("YBR_FULL_422 needs an even width and 8-bit samples.")
            ds.PlanarConfiguration = 0  # the standard allows only interleaved 4:2:2
            pairs = stack.reshape(stack.shape[0], stack.shape[1], stack.shape[2] // 2, 2, 3).astype(np.uint16)
            luma = pairs[..., 0]
            chroma = (pairs[..., 1:].sum(axis=3) + 1) // 2  # [F, H, W/2, 2]: Cb, Cr averaged over the pair
            packed = np.concatenate([luma, chroma], axis=-1)  # Y1 Y2 Cb Cr
            return packed.astype(np.uint8).tobytes()
        if planar == 1:
            stack = np.ascontiguousarray(stack.transpose(0, 3, 1, 2))
    dtype = stack.dtype.newbyteorder(">" if big_endian else "<")
    data = np.ascontiguousarray(stack).astype(dtype).tobytes()
    return data + b"\0" if len(data) % 2 else data


def _jpeg_baseline(ds, stack: np.ndarray, photometric: str) -> None:
    from pydicom.encaps import encapsulate
    from pydicom.uid import UID

    if stack.dtype != np.uint8:
        raise DataError("JPEG baseline holds 8-bit samples only.")
    fragments = []
    for frame in stack:
        buffer = io.BytesIO()
        # subsampling=1 is 4:2:2, what YBR_FULL_422 names; RGB keeps full chroma (and no colour transform
        # is signalled any other way in DICOM, so RGB is stored as YCbCr 4:4:4 and named YBR_FULL).
        Image.fromarray(frame).save(buffer, format="JPEG", quality=95,
                                    subsampling=1 if photometric != "RGB" else 0)
        fragments.append(buffer.getvalue())
    ds.PixelData = encapsulate(fragments)
    ds["PixelData"].VR = "OB"
    if stack.ndim == 4:
        ds.PhotometricInterpretation = "YBR_FULL_422" if photometric != "RGB" else "YBR_FULL"
    ds.file_meta.TransferSyntaxUID = UID(TRANSFER_SYNTAXES["jpeg_baseline"])


def _set_palette(ds, palette: np.ndarray) -> None:
    if palette.ndim != 2 or palette.shape[1] != 3 or not 1 <= palette.shape[0] <= 65536:
        raise DataError("A palette is an [N, 3] array of colours.")
    bits = 16 if palette.dtype == np.uint16 else 8
    entries = palette.shape[0]
    for index, colour in enumerate(("Red", "Green", "Blue")):
        setattr(ds, f"{colour}PaletteColorLookupTableDescriptor", [entries % 65536, 0, bits])
        data = palette[:, index].astype("<u2").tobytes()  # 8-bit entries are still stored in 16-bit words
        setattr(ds, f"{colour}PaletteColorLookupTableData", data)
        ds[f"{colour}PaletteColorLookupTableData"].VR = "OW"


# --- JPEG Lossless (ITU-T T.81, process 14, Huffman coded) ----------------------------------------------

# One table for every component: the 17 difference categories (SSSS 0..16), each a 5-bit code.
_CATEGORY_BITS = 5


def jpeg_lossless(frame: np.ndarray, precision: int, predictor: int = 1) -> bytes:
    """A JPEG Lossless codestream (SOF3) of one HxW or HxWx3 frame with predictor 1-7 (1: Selection
    Value 1, the DICOM default)."""
    if predictor not in range(1, 8) or not 2 <= precision <= 16:
        raise DataError("JPEG Lossless needs predictor 1-7 and 2-16 bits.")
    samples = frame.astype(np.int64)
    if samples.ndim == 2:
        samples = samples[..., None]
    height, width, components = samples.shape
    diffs = np.empty_like(samples)
    for c in range(components):
        diffs[..., c] = samples[..., c] - _prediction(samples[..., c], predictor, precision)
    diffs = diffs % 65536
    diffs = np.where(diffs >= 32768, diffs - 65536, diffs)  # -32767 .. 32768
    magnitude = np.abs(diffs)
    categories = np.zeros_like(magnitude)
    nonzero = magnitude > 0
    categories[nonzero] = np.floor(np.log2(magnitude[nonzero])).astype(np.int64) + 1
    extra = np.where(diffs >= 0, diffs, diffs - 1) & ((1 << categories) - 1)
    extra = np.where(categories == 16, 0, extra)  # a difference of 32768 carries no extra bits

    bits = _BitWriter()
    for category, value in zip(categories.ravel().tolist(), extra.ravel().tolist(), strict=True):
        bits.put(category, _CATEGORY_BITS)
        if 0 < category < 16:
            bits.put(value, category)
    scan = bits.finish()

    out = bytearray(b"\xff\xd8")
    sof = bytes([precision]) + height.to_bytes(2, "big") + width.to_bytes(2, "big") + bytes([components])
    sof += b"".join(bytes([c + 1, 0x11, 0]) for c in range(components))
    out += b"\xff\xc3" + (len(sof) + 2).to_bytes(2, "big") + sof
    counts = [0] * 16
    counts[_CATEGORY_BITS - 1] = 17
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    out += b"\xff\xc4" + (len(dht) + 2).to_bytes(2, "big") + dht
    sos = bytes([components]) + b"".join(bytes([c + 1, 0x00]) for c in range(components)) + bytes([predictor, 0, 0])
    out += b"\xff\xda" + (len(sos) + 2).to_bytes(2, "big") + sos
    out += scan + b"\xff\xd9"
    return bytes(out)


def _prediction(x: np.ndarray, predictor: int, precision: int) -> np.ndarray:
    """T.81 H.1.2.1: the first line uses the left neighbour, the first column the one above, the first
    sample 2^(P-1); elsewhere the selected predictor."""
    ra = np.zeros_like(x)
    rb = np.zeros_like(x)
    rc = np.zeros_like(x)
    ra[:, 1:] = x[:, :-1]
    rb[1:, :] = x[:-1, :]
    rc[1:, 1:] = x[:-1, :-1]
    predicted = {
        1: ra, 2: rb, 3: rc, 4: ra + rb - rc, 5: ra + ((rb - rc) >> 1), 6: rb + ((ra - rc) >> 1),
        7: (ra + rb) >> 1,
    }[predictor].copy()
    predicted[0, 1:] = x[0, :-1]
    predicted[1:, 0] = x[:-1, 0]
    predicted[0, 0] = 1 << (precision - 1)
    return predicted


class _BitWriter:
    def __init__(self) -> None:
        self._out = bytearray()
        self._accumulator = 0
        self._count = 0

    def put(self, value: int, length: int) -> None:
        self._accumulator = (self._accumulator << length) | value
        self._count += length
        while self._count >= 8:
            self._count -= 8
            byte = (self._accumulator >> self._count) & 0xFF
            self._out.append(byte)
            if byte == 0xFF:
                self._out.append(0)  # byte stuffing: 0xFF in the scan is followed by 0x00
        self._accumulator &= (1 << self._count) - 1

    def finish(self) -> bytes:
        if self._count:
            self.put((1 << (8 - self._count)) - 1, 8 - self._count)  # pad with 1-bits
        return bytes(self._out)


# --- the SYNTHETIC DICOM examples (dopamine demo-data --dicom) ------------------------------------------

_EXAMPLE_CAMERAS = (("Topcon", "TRC-NW8", 45), ("Canon", "CR-2 AF", 45), ("Zeiss", "VISUCAM 500", 30))


def write_dicom_examples(out: Path, *, size: int = 128, seed: int = 0) -> dict[str, Any]:
    """SYNTHETIC fundus photographs as Ophthalmic Photography DICOM, one file per transfer syntax plus a
    stereo pair (two frames), in class folders out/<grade>/ (readable by ``dopamine inspect``). Not real
    patient data: each file says so in its Image Comments and Series Description."""
    from core.data.synthetic import SYNTHETIC_TEXT, generate_fundus, hospital_style

    out = Path(out)
    if size < 32:
        raise DataError(f"Synthetic images need at least 32 px, not {size}.")
    written: list[str] = []
    images = 0
    jobs = [(syntax, 1) for syntax in TRANSFER_SYNTAXES] + [("jpeg_baseline", 2), ("rle", 2)]
    for index, (syntax, frames) in enumerate(jobs):
        grade = index % 5
        rng = np.random.default_rng([seed & 0xFFFFFFFF, 0xD1C, index])
        style = hospital_style(index % len(_EXAMPLE_CAMERAS), seed)
        pictures = [np.asarray(generate_fundus(grade, size=size, rng=rng, style=style)) for _ in range(frames)]
        make, model, field_of_view = _EXAMPLE_CAMERAS[index % len(_EXAMPLE_CAMERAS)]
        side = "L" if index % 2 else "R"
        name = f"synthetic_{syntax}{'_stereo' if frames > 1 else ''}.dcm"
        write_dicom(out / str(grade) / name, pictures if frames > 1 else pictures[0], syntax=syntax,
                    ImageLaterality=side, Laterality=side, Manufacturer=make, ManufacturerModelName=model,
                    HorizontalFieldOfView=field_of_view, PatientName="SYNTHETIC^NOT A PATIENT",
                    SeriesDescription="SYNTHETIC - NOT REAL PATIENT DATA", ImageComments=f"Synthetic: {SYNTHETIC_TEXT}")
        written.append(f"{grade}/{name}")
        images += frames
    return {"files": len(written), "images": images, "written": written}
