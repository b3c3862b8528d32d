import numpy as np
import pytest

from core.data import DR_CLASSES, open_dataset
from core.errors import DataError


def kinds(dataset):
    return sorted((p.kind, p.path.rsplit("/", 1)[-1]) for p in dataset.issues)


def test_grade_folders_map_to_dr_classes(tmp_path, write_image):
    for grade, count in [(0, 2), (2, 1), (4, 3)]:
        for i in range(count):
            write_image(tmp_path / str(grade) / f"img{i}.png", seed=grade * 10 + i)
    dataset = open_dataset(tmp_path)
    assert dataset.layout == "folders" and dataset.classes == DR_CLASSES
    assert sorted(dataset.labels) == [0, 0, 2, 4, 4, 4]
    assert all(s.path.parent.name == str(s.label) for s in dataset.samples)
    assert dataset.issues == []


def test_named_class_folders_are_sorted(tmp_path, write_image):
    write_image(tmp_path / "pneumonia" / "a.png")
    write_image(tmp_path / "normal" / "b.jpg", fmt="JPEG")
    write_image(tmp_path / "covid" / "nested" / "c.png")  # images may sit deeper inside a class folder
    dataset = open_dataset(tmp_path)
    assert dataset.classes == ["covid", "normal", "pneumonia"]
    assert {s.path.name: s.label for s in dataset.samples} == {"a.png": 2, "b.jpg": 1, "c.png": 0}


def test_dr_grade_names_as_folders(tmp_path, write_image):
    write_image(tmp_path / "No DR" / "a.png")
    write_image(tmp_path / "proliferative dr" / "b.png")
    dataset = open_dataset(tmp_path)
    assert dataset.classes == DR_CLASSES
    assert {s.path.name: s.label for s in dataset.samples} == {"a.png": 0, "b.png": 4}


def test_non_images_and_loose_images_become_issues(tmp_path, write_image):
    write_image(tmp_path / "0" / "a.png")
    (tmp_path / "0" / "notes.txt").write_text("hello")
    (tmp_path / "0" / ".DS_Store").write_bytes(b"junk")  # hidden files are silently ignored
    write_image(tmp_path / "loose.png")
    (tmp_path / "README.md").write_text("readme")  # documents beside the class folders are fine
    dataset = open_dataset(tmp_path)
    assert [s.path.name for s in dataset.samples] == ["a.png"]
    assert kinds(dataset) == [("no_label", "loose.png"), ("not_image", "notes.txt")]
    assert len(dataset.unused_files) == 2


def test_dicom_files_in_class_folders(tmp_path, write_dicom):
    write_dicom(tmp_path / "1" / "IM0001", np.zeros((8, 8), np.uint8))
    write_dicom(tmp_path / "3" / "b.dcm", np.zeros((8, 8), np.uint16))
    dataset = open_dataset(tmp_path)
    assert {s.path.name: s.label for s in dataset.samples} == {"IM0001": 1, "b.dcm": 3}


def test_nothing_usable_raises(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images found"):
        open_dataset(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        open_dataset(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="single file"):
        open_dataset(tmp_path / "file.txt")


def aptos(tmp_path, write_image, write_dicom):
    images = tmp_path / "train_images"
    write_image(images / "aaa.png", seed=1)
    write_image(images / "bbb.jpg", seed=2, fmt="JPEG")
    write_dicom(images / "ccc.dcm", np.zeros((8, 8), np.uint8))
    write_image(images / "unlisted.png", seed=3)
    write_image(tmp_path / "test_images" / "t1.png", seed=4)  # APTOS ships unlabelled test images beside
    (tmp_path / "train.csv").write_text("id_code,diagnosis\naaa,0\nbbb,3\nccc,4\nmissing,2\nbad,7\n")
    (tmp_path / "test.csv").write_text("id_code\nt1\n")  # no diagnosis column: not a labels CSV
    write_image(images / "bad.png", seed=5)
    return tmp_path


def test_aptos_csv_beside_train_images(tmp_path, write_image, write_dicom):
    root = aptos(tmp_path, write_image, write_dicom)
    for dataset in (open_dataset(root), open_dataset(root / "train.csv")):
        assert dataset.layout == "csv" and dataset.classes == DR_CLASSES
        assert dataset.labels_csv == root / "train.csv"
        assert {s.path.name: s.label for s in dataset.samples} == {"aaa.png": 0, "bbb.jpg": 3, "ccc.dcm": 4}
        assert kinds(dataset) == [("no_image_for_csv_row", "missing"), ("no_label", "bad.png"),
                                  ("no_label", "unlisted.png")]
        reasons = {p.path.rsplit("/", 1)[-1]: p.reason for p in dataset.issues}
        assert "line 6" in reasons["bad.png"] and "'7'" in reasons["bad.png"]
        assert "line 5" in reasons["missing"]


def test_csv_with_images_in_the_same_folder(tmp_path, write_image):
    write_image(tmp_path / "x1.png")
    write_image(tmp_path / "x2.tif", seed=2)
    (tmp_path / "labels.csv").write_text("\ufeffID_CODE , Diagnosis\r\nx1,1\r\nx2.tif,2\r\n")  # BOM, CRLF, case
    dataset = open_dataset(tmp_path)
    assert {s.path.name: s.label for s in dataset.samples} == {"x1.png": 1, "x2.tif": 2}
    assert dataset.issues == []


def test_explicit_labels_csv_elsewhere(tmp_path, write_image):
    images = tmp_path / "scans"
    write_image(images / "deep" / "p1.png")
    write_image(images / "p2.png", seed=1)
    (images / "info.txt").write_text("x")
    csv = tmp_path / "meta" / "grades.csv"
    csv.parent.mkdir()
    csv.write_text("id_code,diagnosis\np1,2\np2,2\np2,2\n")  # a repeated identical row is harmless
    dataset = open_dataset(images, labels_csv=csv)
    assert {s.path.name: s.label for s in dataset.samples} == {"p1.png": 2, "p2.png": 2}
    assert kinds(dataset) == [("not_image", "info.txt")]


def test_conflicting_rows_and_duplicate_ids(tmp_path, write_image):
    write_image(tmp_path / "imgs" / "a.png")
    write_image(tmp_path / "imgs" / "a.jpg", fmt="JPEG")
    write_image(tmp_path / "imgs" / "b.png", seed=1)
    write_image(tmp_path / "imgs" / "c.png", seed=2)
    (tmp_path / "l.csv").write_text("id_code,diagnosis\na,1\nb,1\nb,3\nc,0\nc.png,1\n")
    dataset = open_dataset(tmp_path)
    assert {s.path.name for s in dataset.samples} == {"a.jpg", "c.png"}
    assert [s.label for s in dataset.samples if s.path.name == "c.png"] == [0]
    assert kinds(dataset) == [("no_label", "a.png"), ("no_label", "b.png"), ("no_label", "c.png")]
    assert any("different grades" in p.reason for p in dataset.issues)


def test_bad_csvs(tmp_path, write_image):
    write_image(tmp_path / "a.png")
    (tmp_path / "one.csv").write_text("id_code,diagnosis\na,1\n")
    (tmp_path / "two.csv").write_text("id_code,diagnosis\na,1\n")
    with pytest.raises(DataError, match="several label CSVs"):
        open_dataset(tmp_path)
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("name,grade\na,1\n")
    with pytest.raises(DataError, match="id_code,diagnosis"):
        open_dataset(wrong)
    nomatch = tmp_path / "sub" / "n.csv"
    nomatch.parent.mkdir()
    nomatch.write_text("id_code,diagnosis\nzzz,1\n")
    with pytest.raises(DataError, match="matches an image"):
        open_dataset(nomatch)
    binary = tmp_path / "bin" / "b.csv"
    binary.parent.mkdir()
    binary.write_bytes(b"id_code,diagnosis\n\xff\xfe\x00\x81,1\n")
    with pytest.raises(DataError, match="UTF-8"):
        open_dataset(binary)
