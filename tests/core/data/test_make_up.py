"""Validation with real hospitals' kinds of files: each frame a sample, the cap on frames, laterality per
sample, the make-up report (devices, resolutions, eyes) and the fundus-crop check in ``dopamine inspect``."""

import json

import numpy as np
import torch

from core.cli import main
from core.data import Preprocessing, load_image, load_tensors, resize_crop, validate
from core.data.dicom_writer import write_dicom
from core.data.images import MAX_FRAMES_PER_FILE
from core.data.synthetic import camera_photograph


def _rgb(seed: int, size: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (size, size, 3), dtype=np.uint8)


def _collection(root):
    write_dicom(root / "0" / "stereo.dcm", [_rgb(1), _rgb(2)], syntax="rle", ImageLaterality="L",
                Manufacturer="Topcon", ManufacturerModelName="TRC-NW8", HorizontalFieldOfView=45)
    write_dicom(root / "0" / "single.dcm", _rgb(3), syntax="jpeg_ls", Laterality="R", Manufacturer="Canon",
                ManufacturerModelName="CR-2")
    write_dicom(root / "1" / "nolat.dcm", _rgb(4, 64), syntax="jpeg2000_lossless")
    write_dicom(root / "1" / "cine.dcm", [np.full((8, 8), i, np.uint8) for i in range(MAX_FRAMES_PER_FILE + 1)])
    from PIL import Image

    Image.fromarray(_rgb(5)).save(root / "1" / "7_left.png")
    return root


def test_each_frame_is_a_sample_with_its_laterality(tmp_path):
    report = validate(_collection(tmp_path / "h"), min_size=32)
    names = sorted((s.name, s.laterality) for s in report.usable_samples)
    assert names == [("7_left.png", "L"), ("nolat.dcm", None), ("single.dcm", "R"),
                     ("stereo.dcm [frame 1]", "L"), ("stereo.dcm [frame 2]", "L")]
    assert report.usable == 5 and report.usable_files == 4
    assert report.class_counts == {"No DR": 3, "Mild": 2, "Moderate": 0, "Severe": 0, "Proliferative DR": 0}
    too_many = [p for p in report.problems if p.kind == "too_many_frames"]
    assert len(too_many) == 1 and too_many[0].path.endswith("cine.dcm")
    assert "export the frames you need" in too_many[0].reason


def test_frames_load_as_their_own_pictures(tmp_path):
    report = validate(_collection(tmp_path / "h"), min_size=32)
    stereo = [s for s in report.usable_samples if s.frame is not None]
    spec = Preprocessing(size=32)
    images, _ = load_tensors(stereo, spec, cache_dir=tmp_path / "cache")
    for index, sample in enumerate(stereo):
        assert torch.equal(images[index], resize_crop(load_image(sample.path, frame=sample.frame), spec))
    assert not torch.equal(images[0], images[1])


def test_make_up_counts_devices_resolutions_and_eyes(tmp_path):
    report = validate(_collection(tmp_path / "h"), min_size=32)
    make_up = report.make_up
    assert make_up["devices"] == {"Topcon TRC-NW8": 2, "Canon CR-2": 1, "unknown": 2}
    assert make_up["laterality"] == {"left": 3, "right": 1, "unknown": 1}
    assert make_up["resolution"]["distinct"] == 2
    assert make_up["resolution"]["width"] == {"min": 48, "median": 48, "max": 64}
    assert make_up["formats"] == {"DICOM": 4, "PNG": 1}
    assert make_up["field_of_view"] == {"45 deg": 2}
    assert make_up["multi_frame"] == {"images": 2, "files": 1}
    text = report.to_text()
    assert "Cameras/devices: Topcon TRC-NW8 2, Canon CR-2 1, unknown 2" in text
    assert "Eyes: left 3, right 1 (75% left), unknown 1" in text
    assert "Usable images: 5 (from 4 files)" in text
    assert json.loads(report.to_json())["make_up"]["laterality"]["left"] == 3


def test_inspect_reports_the_fundus_crop_and_its_fallbacks(tmp_path, capsys):
    root = tmp_path / "eyes"
    (root / "0").mkdir(parents=True)
    camera_photograph(0, width=320, height=240, centre=(170, 120), radius=110, seed=1).save(root / "0" / "a.png")
    camera_photograph(0, width=300, height=300, centre=(150, 150), radius=200, seed=2).save(root / "0" / "cropped.png")
    assert main(["inspect", str(root), "--fundus-crop", "--min-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "Fundus crop: retina found in 1 of 2 images (0 cut by the frame); 1 use the plain crop" in text
    assert "cropped.png: no dark surround" in text
    assert main(["inspect", str(root), "--json", "--min-size", "32"]) == 0
    assert "fundus_crop" not in json.loads(capsys.readouterr().out)["make_up"]  # only when asked


def test_inspect_max_frames(tmp_path, capsys):
    root = tmp_path / "series"
    write_dicom(root / "0" / "three.dcm", [_rgb(i) for i in range(3)])
    assert main(["inspect", str(root), "--json", "--min-size", "32", "--max-frames", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] == 0 and report["problem_counts"]["too_many_frames"] == 1
    assert main(["inspect", str(root), "--json", "--min-size", "32"]) == 0
    assert json.loads(capsys.readouterr().out)["usable"] == 3


def test_demo_dicom_examples_cover_every_syntax_and_decode(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--hospitals", "1", "--per-hospital", "5", "--test-images", "0",
                 "--size", "48", "--dicom", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dicom"]["files"] == 14 and summary["dicom"]["images"] == 16
    assert main(["inspect", str(out / "dicom"), "--json", "--min-size", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] == 16 and report["problems"] == []
    assert len(report["make_up"]["dicom_transfer_syntaxes"]) == 12
    import pydicom

    first = pydicom.dcmread(next((out / "dicom").rglob("*.dcm")), stop_before_pixels=True)
    assert "SYNTHETIC" in str(first.SeriesDescription)
