"""Fuzzing the APTOS label CSV (core.data.dataset): header variants, rows naming images that exist or not,
grades that are not grades, quoting, encodings and raw byte mutations. The collection opens (its bad rows
listed as issues) or is refused with a DataError in one line. Class-folder names get the same treatment."""

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from reliability_kit import corpus_params, fuzz_settings, mutate, run_case

from core.data.dataset import open_dataset

IDS = ["000c1434d8d7", "001639a390f0", "0024cdab0c1e", "a", "A", "a.png", "left_1", "right_1"]


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aptos")
    images = root / "train_images"
    images.mkdir()
    for index, name in enumerate(("000c1434d8d7.png", "001639a390f0.jpg", "0024cdab0c1e.png", "a.png", "left_1.bmp")):
        Image.fromarray(np.full((8, 8, 3), index * 40, np.uint8)).save(images / name)
    (images / "notes.txt").write_text("not an image")
    return root


def open_both(root: Path, csv: Path):
    """Found beside the images (the folder), and named explicitly (--labels-csv)."""
    found = open_dataset(root)
    named = open_dataset(root / "train_images", labels_csv=csv)
    for dataset in (found, named):
        assert all(0 <= label < len(dataset.classes) for label in dataset.labels)
        assert len({s.path for s in dataset.samples}) == len(dataset.samples), "an image is labelled twice"
    return found


_cell = st.one_of(st.sampled_from(IDS), st.sampled_from(["0", "1", "4", "5", "-1", "2.0", " 3 ", "", "०", "¹", "x"]),
                  st.text(max_size=12))
_grade = st.sampled_from(["0", "1", "2", "3", "4", "4", "5", "x", "¹", " 2"])
_header = st.sampled_from(["id_code,diagnosis", "id_code,diagnosis", "id_code,diagnosis", "ID_CODE, Diagnosis ", "diagnosis,id_code", "id_code,diagnosis,extra",
                           "id_code", "image,level", "id_code,diagnosis,id_code", ""])


@st.composite
def csv_files(draw) -> bytes:
    header = draw(_header)
    row = st.one_of(st.tuples(st.sampled_from(IDS), _grade).map(list), st.tuples(st.sampled_from(IDS), _grade).map(list),
                    st.lists(_cell, min_size=0, max_size=4))
    rows = draw(st.lists(row, max_size=12))
    quote = draw(st.booleans())
    lines = [header] + [",".join(f'"{c}"' if quote else c for c in row) for row in rows]
    text = draw(st.sampled_from(["\n", "\r\n", "\r"])).join(lines)
    data = draw(st.sampled_from([b"", b"\xef\xbb\xbf"])) + text.encode("utf-8", "surrogatepass")
    return mutate(data, draw, max_edits=2) if draw(st.integers(0, 3)) == 0 else data


def check(root: Path, data: bytes):
    csv = root / "train.csv"
    csv.write_bytes(data)
    return run_case("csv", lambda: open_both(root, csv), data=data, suffix=".csv")


@fuzz_settings("csv", share=0.85)
@given(data=csv_files())
def test_label_csvs_open_or_are_refused_in_one_line(collection, data):
    check(collection, data)


_folder_name = st.text(st.sampled_from("0123456789¹²٣०MildSevere _.-"), min_size=1, max_size=8).filter(
    lambda n: n.strip(" .") == n and not n.startswith(("-", ".")))


@fuzz_settings("csv", share=0.15)
@given(names=st.lists(_folder_name, min_size=1, max_size=4, unique_by=str.lower))
def test_class_folder_names_open_or_are_refused_in_one_line(names):
    check_folders(names)


def check_folders(names: list[str]):
    """One class folder per name, one image in each (kept in the corpus as the names joined by "/")."""
    root = Path(tempfile.mkdtemp(prefix="classes-"))
    try:
        for name in names:
            (root / name).mkdir()
            Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / name / "x.png")
        return run_case("csv", lambda: open_dataset(root), data="/".join(names).encode(), suffix=".folders")
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("path", corpus_params("csv"))
def test_the_csv_corpus(collection, path):
    if path.suffix == ".folders":
        check_folders(path.read_text(encoding="utf-8").split("/"))
    else:
        check(collection, path.read_bytes())
