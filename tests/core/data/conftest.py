"""Factories for small image and DICOM files written inside the tests (no data is shipped)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def gradient_rgb(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, seed-dependent RGB picture (smooth so that JPEG round trips stay close)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width]
    base = rng.uniform(40, 200, size=3)
    tilt = rng.uniform(-1.5, 1.5, size=(3, 2))
    channels = [base[c] + tilt[c, 0] * xs + tilt[c, 1] * ys for c in range(3)]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


@pytest.fixture
def gradient():
    return gradient_rgb


@pytest.fixture
def write_image():
    def write(path: Path, size: tuple[int, int] = (40, 32), seed: int = 0, fmt: str | None = None) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(gradient_rgb(*size, seed=seed)).save(path, format=fmt)
        return path

    return write


@pytest.fixture
def write_dicom():
    """write(path, pixels, photometric=..., **attributes) -> Path; JPEG baseline with jpeg=True."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        JPEGBaseline8Bit,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    def write(path: Path, pixels: np.ndarray, *, photometric: str | None = None, jpeg: bool = False,
              frames: int = 1, **attributes) -> Path:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit if jpeg else ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "OP"
        colour = pixels.ndim == 3
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.SamplesPerPixel = 3 if colour else 1
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
        ds.PixelRepresentation = 0
        if colour:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
        if frames > 1:
            ds.NumberOfFrames = frames
        for name, value in attributes.items():
            setattr(ds, name, value)
        if jpeg:
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
            ds.PhotometricInterpretation = "YBR_FULL_422"
            ds.PixelData = encapsulate([buffer.getvalue()])
            ds["PixelData"].VR = "OB"
        else:
            ds.PixelData = np.ascontiguousarray(np.concatenate([pixels] * frames)).tobytes()
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        return path

    return write


@pytest.fixture
def messy(tmp_path, write_image, write_dicom):
    """A class-folder collection with one of every problem."""
    root = tmp_path / "hospital"
    write_image(root / "0" / "good0.png", size=(80, 80), seed=1)
    write_image(root / "0" / "good1.jpg", size=(80, 80), seed=2, fmt="JPEG")
    write_image(root / "2" / "small.png", size=(30, 50), seed=3)
    shutil.copy(root / "0" / "good0.png", root / "2" / "copy_of_good0.png")  # same bytes, other label
    write_dicom(root / "2" / "scan.dcm", np.full((96, 96), 120, np.uint8))
    full = write_image(root / "1" / "cut.png", size=(80, 80), seed=4).read_bytes()
    (root / "1" / "cut.png").write_bytes(full[: len(full) // 2])
    (root / "1" / "fake.jpg").write_text("this is not a jpeg")
    (root / "1" / "notes.txt").write_text("hello")
    write_image(root / "stray.png", size=(80, 80), seed=5)
    return root
