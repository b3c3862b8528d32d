"""DICOM header fields for display: technical fields by default, identifying ones only on request.

Both lists are explicit allow-lists: a field not named here is never shown, so a private or
unexpected tag cannot leak patient information into the viewer.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from core.data.images import has_dicom_preamble
from core.errors import DataError

NON_IDENTIFYING_FIELDS: tuple[tuple[str, str], ...] = (
    ("Modality", "Modality"),
    ("Manufacturer", "Manufacturer"),
    ("ManufacturerModelName", "Model"),
    ("Rows", "Rows"),
    ("Columns", "Columns"),
    ("BitsAllocated", "Bits allocated"),
    ("BitsStored", "Bits stored"),
    ("SamplesPerPixel", "Samples per pixel"),
    ("PhotometricInterpretation", "Photometric interpretation"),
    ("PixelSpacing", "Pixel spacing (mm)"),
    ("ImagerPixelSpacing", "Imager pixel spacing (mm)"),
    ("BodyPartExamined", "Body part"),
    ("Laterality", "Laterality"),
    ("ImageLaterality", "Image laterality"),
    ("ViewPosition", "View position"),
    ("NumberOfFrames", "Frames"),
    ("WindowCenter", "Window center"),
    ("WindowWidth", "Window width"),
)

IDENTIFYING_FIELDS: tuple[tuple[str, str], ...] = (
    ("PatientName", "Patient name"),
    ("PatientID", "Patient ID"),
    ("PatientBirthDate", "Birth date"),
    ("PatientSex", "Sex"),
    ("PatientAge", "Age"),
    ("OtherPatientIDs", "Other patient IDs"),
    ("AccessionNumber", "Accession number"),
    ("StudyDate", "Study date"),
    ("StudyTime", "Study time"),
    ("StudyDescription", "Study description"),
    ("SeriesDescription", "Series description"),
    ("InstitutionName", "Institution"),
    ("ReferringPhysicianName", "Referring physician"),
    ("OperatorsName", "Operator"),
    ("StudyInstanceUID", "Study UID"),
    ("SeriesInstanceUID", "Series UID"),
    ("SOPInstanceUID", "Instance UID"),
)

_MAX_VALUE_CHARS = 200


def is_dicom_path(path: Path) -> bool:
    """True for .dcm files and extensionless files with the DICOM marker."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return True
    return not path.suffix and has_dicom_preamble(path)


def _text(value: object) -> str:
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        text = " \\ ".join(str(v) for v in value)
    else:
        text = str(value)
    text = "".join(ch if ch.isprintable() else " " for ch in text).strip()
    return text[:_MAX_VALUE_CHARS]


def dicom_metadata(path: Path, *, identifying: bool = False) -> list[tuple[str, str]]:
    """(label, value) pairs for the allow-listed fields present in the file's header.

    Pixel data is not read. Identifying fields (patient name, ID, birth date, ...) are added only when
    ``identifying`` is True.
    """
    path = Path(path)
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path.name}: the DICOM header cannot be read ({type(exc).__name__}); check the file.") from exc
    fields = NON_IDENTIFYING_FIELDS + (IDENTIFYING_FIELDS if identifying else ())
    rows = []
    for keyword, label in fields:
        try:
            value = dataset.get(keyword)
        except Exception as exc:  # noqa: BLE001 - a malformed element must not break the panel
            value = f"(unreadable: {type(exc).__name__})"
        if value is None or value == "":
            continue
        rows.append((label, _text(value)))
    return rows
