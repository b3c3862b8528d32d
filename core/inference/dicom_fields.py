"""DICOM header fields for display: technical fields by default, identifying ones only on request.

Both lists are explicit allow-lists: a field not named here is never shown, so a private or
unexpected tag cannot leak patient information into the viewer. First come the facts a fundus reader
asks for, derived from several fields: which eye, the camera, the field of view, the compression.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from core.data.images import dicom_field_of_view, dicom_laterality, has_dicom_preamble
from core.errors import DataError

NON_IDENTIFYING_FIELDS: tuple[tuple[str, str], ...] = (
    ("SOPClassUID", "Kind of image"),
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
    ("HorizontalFieldOfView", "Horizontal field of view (deg)"),
    ("AcquisitionDeviceTypeCodeSequence", "Acquisition device type"),
    ("AnatomicRegionSequence", "Anatomic region"),
    ("PlanarConfiguration", "Planar configuration"),
    ("VOILUTFunction", "VOI LUT function"),
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
    ("StationName", "Station name"),
    ("DeviceSerialNumber", "Device serial number"),
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
    if isinstance(value, pydicom.uid.UID):
        value = value.name  # the UID's registered name ("Ophthalmic Photography 8 Bit Image Storage")
    elif isinstance(value, pydicom.sequence.Sequence):
        # Coded entries: the first item's meaning ("Fundus Camera", "Retina").
        value = str(value[0].get("CodeMeaning", "")) if len(value) else ""
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
    rows = _summary_rows(dataset)
    for keyword, label in fields:
        try:
            value = dataset.get(keyword)
        except Exception as exc:  # noqa: BLE001 - a malformed element must not break the panel
            value = f"(unreadable: {type(exc).__name__})"
        if value is None or value == "":
            continue
        rows.append((label, _text(value)))
    return rows


_EYES = {"L": "Left", "R": "Right"}


def _summary_rows(dataset) -> list[tuple[str, str]]:
    """Eye, camera, field of view and compression, from whichever fields the file has."""
    rows: list[tuple[str, str]] = []
    try:
        eye = dicom_laterality(dataset)
        rows.append(("Eye", _EYES[eye] if eye else "not recorded"))
        maker = [_text(dataset.get(k) or "") for k in ("Manufacturer", "ManufacturerModelName")]
        device = " ".join(word for word in maker if word)
        if device:
            rows.append(("Camera / device", device))
        field_of_view = dicom_field_of_view(dataset)
        if field_of_view:
            rows.append(("Field of view", field_of_view))
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        if syntax:
            rows.append(("Transfer syntax", _text(syntax)))
    except Exception:  # noqa: BLE001 - a malformed element must not break the panel
        pass
    return rows
