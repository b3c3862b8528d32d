"""The DICOM panel shows technical fields; identifying ones only when asked."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import DataError
from core.inference import dicom_metadata, is_dicom_path


def test_identifying_fields_only_on_request(tmp_path, kit):
    path = tmp_path / "eye.dcm"
    kit.write_dicom(path, np.zeros((20, 30), np.uint8), PatientName="Doe^Jane", PatientID="123-45",
                    PatientBirthDate="19600101", Manufacturer="Topcon", BodyPartExamined="EYE",
                    ImageLaterality="L", PixelSpacing=[0.01, 0.01], InstitutionName="St Elsewhere")
    shown = dict(dicom_metadata(path))
    assert shown["Modality"] == "OP" and shown["Rows"] == "20" and shown["Columns"] == "30"
    assert shown["Manufacturer"] == "Topcon" and shown["Image laterality"] == "L"
    assert shown["Photometric interpretation"] == "MONOCHROME2"
    text = repr(shown)
    for secret in ("Doe", "123-45", "19600101", "Elsewhere"):
        assert secret not in text
    everything = dict(dicom_metadata(path, identifying=True))
    assert everything["Patient name"] == "Doe^Jane" and everything["Patient ID"] == "123-45"
    assert everything["Birth date"] == "19600101" and everything["Institution"] == "St Elsewhere"


def test_unlisted_tags_never_appear(tmp_path, kit):
    path = tmp_path / "x.dcm"
    kit.write_dicom(path, np.zeros((8, 8), np.uint8), OtherPatientNames="Secret^Name", PatientComments="secret")
    assert "Secret" not in repr(dicom_metadata(path, identifying=True))


def test_detection_and_errors(tmp_path, kit):
    kit.write_dicom(tmp_path / "noext", np.zeros((8, 8), np.uint8))
    (tmp_path / "fake.dcm").write_bytes(b"not dicom at all")
    assert is_dicom_path(tmp_path / "noext") and is_dicom_path(tmp_path / "fake.dcm")
    assert not is_dicom_path(tmp_path / "x.png")
    with pytest.raises(DataError, match="fake.dcm"):
        dicom_metadata(tmp_path / "fake.dcm")
