"""Inference on real hospital files: one prediction per frame (numbered in the reports), the eye in the
reports, and a model trained with the fundus crop repeating it exactly."""

import csv
import io

import numpy as np
import pytest
import torch

from core.data import Preprocessing, Sample, load_image, load_tensors, normalize, prepare
from core.data.dicom_writer import write_dicom
from core.data.synthetic import camera_photograph
from core.inference import BatchConfig, open_model, run


def _frames(count: int, size: int = 40) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(count)]


def test_each_frame_is_predicted_and_numbered_in_the_reports(package_path, tmp_path, kit):
    folder = tmp_path / "in"
    series = write_dicom(folder / "stereo.dcm", _frames(3), syntax="rle", ImageLaterality="L")
    kit.random_image(1).save(folder / "photo.png")
    out = tmp_path / "out"
    result = run(BatchConfig(model=package_path, inputs=[folder], csv=out / "p.csv", report=out / "p.html",
                             heatmaps=out / "heat", report_heatmaps=False))
    rows = list(csv.DictReader(io.StringIO((out / "p.csv").read_text(encoding="utf-8"))))
    assert [(r["file"].rsplit("/", 1)[-1], r["frame"], r["laterality"]) for r in rows] == [
        ("photo.png", "", ""), ("stereo.dcm", "1", "L"), ("stereo.dcm", "2", "L"), ("stereo.dcm", "3", "L")]
    predictor = open_model(package_path)
    for row, frame in zip(rows[1:], range(3), strict=True):
        expected = predictor.predict_file(series, frame=frame)
        assert expected.frame == frame and expected.to_dict()["frame"] == frame + 1
        assert float(row["p_Mild"]) == pytest.approx(expected.probabilities["Mild"], abs=1e-6)
    assert len({row["p_Mild"] for row in rows[1:]}) == 3  # three different pictures, three predictions
    assert sorted(p.name for p in (out / "heat").iterdir()) == [
        "photo.png.heatmap.png", "stereo.dcm.frame1.heatmap.png", "stereo.dcm.frame2.heatmap.png",
        "stereo.dcm.frame3.heatmap.png"]
    page = (out / "p.html").read_text(encoding="utf-8")
    assert "frame 2, left eye" in page and "frame 3, left eye" in page
    assert len(result.predictions) == 4


def test_a_broken_frame_is_reported_and_the_others_still_predict(package_path, tmp_path):
    from pydicom import dcmread
    from pydicom.encaps import encapsulate, generate_frames

    path = write_dicom(tmp_path / "in" / "pair.dcm", _frames(2), syntax="rle")
    ds = dcmread(path)
    frames = list(generate_frames(ds.PixelData, number_of_frames=2))
    ds.PixelData = encapsulate([frames[0], b"\x00" * 8])  # the second frame's RLE header is nonsense
    ds.save_as(path)
    result = run(BatchConfig(model=package_path, inputs=[path]))
    assert [item.frame for item in result.items] == [0, 1]
    assert result.items[0].prediction is not None and result.items[0].error is None
    assert result.items[1].prediction is None and "pair.dcm" in result.items[1].error


def test_fundus_crop_model_repeats_the_training_preprocessing(tmp_path, kit):
    spec = Preprocessing(size=kit.SIZE, fundus_crop=True, crop_margin=0.05, local_contrast=True)
    package = kit.make_package(tmp_path / "fundus.dpm", spec=spec)
    predictor = open_model(package)
    assert predictor.spec.fundus_crop and predictor.spec.local_contrast
    image_path = tmp_path / "eye.png"
    image = camera_photograph(2, width=400, height=300, centre=(250, 150), radius=140, seed=4)
    image.save(image_path)
    # Training: the cache path, from the file. Inference: the predictor, from the decoded image.
    trained, _ = load_tensors([Sample(image_path, 2)], spec, cache_dir=tmp_path / "cache")
    assert torch.equal(normalize(trained[0], spec).unsqueeze(0), predictor.input_tensor(load_image(image_path)))
    box = predictor.crop_box(image.size, image)
    assert box == prepare(image, spec).box
    assert abs(box[0] + box[2] / 2 - 250) < 4 and abs(box[2] - 2 * 140 * 1.05) < 8
    assert box != predictor.crop_box(image.size)  # without the image: the plain centre crop's region
    view = np.asarray(predictor.model_view(image))
    assert view.shape == (kit.SIZE, kit.SIZE, 3) and np.all(view[0, 0] == 128)


def test_a_card_from_before_the_option_opens_with_the_plain_pipeline(package_path):
    predictor = open_model(package_path)
    assert "fundus_crop" not in predictor.card.preprocessing
    assert predictor.spec.fundus_crop is False and predictor.spec.local_contrast is False


def test_dopamine_train_with_the_fundus_crop_writes_it_into_the_card(tmp_path):
    from core.cli import main

    data = tmp_path / "eyes"
    for index in range(10):  # two grades: at least 2 x 5 classes images
        folder = data / str(index % 2)
        folder.mkdir(parents=True, exist_ok=True)
        camera_photograph(2 * (index % 2), width=160 + 8 * index, height=120, centre=(80 + 4 * index, 60),
                          radius=55, seed=index).save(folder / f"{index}.png")
    out = tmp_path / "m.dpm"
    assert main(["train", str(data), "--mode", "c", "--model", "small_cnn", "--image-size", "32", "--epochs", "1",
                 "--batch-size", "4", "--fundus-crop", "--local-contrast", "--out", str(out),
                 "--home", str(tmp_path / "home")]) == 0
    predictor = open_model(out)
    assert predictor.card.preprocessing["fundus_crop"] is True
    assert predictor.card.preprocessing["local_contrast"] is True
    assert predictor.spec.fundus_crop and predictor.spec.local_contrast


def test_dopamine_predict_names_each_frame(package_path, tmp_path, capsys):
    from core.cli import main

    series = write_dicom(tmp_path / "pair.dcm", _frames(2), syntax="jpeg_ls", ImageLaterality="R")
    assert main(["predict", str(package_path), str(series), "--home", str(tmp_path / "home")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "pair.dcm" in line]
    assert [line.split(":")[0].rsplit("/", 1)[-1] for line in lines] == ["pair.dcm [frame 1]", "pair.dcm [frame 2]"]
    assert main(["predict", str(package_path), str(series), "--json", "--home", str(tmp_path / "home")]) == 0
    import json

    rows = json.loads(capsys.readouterr().out)
    assert [(row["frame"], row["laterality"]) for row in rows] == [(1, "R"), (2, "R")]
