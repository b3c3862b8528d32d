"""Batch runs: CSV contents, HTML report, heatmap files, corrupt files listed, progress and cancel."""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import re
from pathlib import Path

import pytest
from PIL import Image

from core.errors import Cancelled, DataError, SignatureError
from core.inference import BatchConfig, find_images, open_model, run
from core.jobs import CancelToken

GOOD = {"a.png", "b.png", "c.jpg", "<b>&x.png"}


def read_csv(path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


def test_find_images_recurses_and_skips_non_images(image_folder):
    names = [p.name for p in find_images([image_folder])]
    assert sorted(names) == sorted(GOOD | {"broken.png"})
    assert "notes.txt" not in names
    # An explicit file is taken whatever it is called; a duplicate is listed once.
    explicit = find_images([image_folder / "notes.txt", image_folder / "a.png", image_folder])
    assert explicit[0].name == "notes.txt" and [p.name for p in explicit].count("a.png") == 1
    with pytest.raises(DataError, match="missing"):
        find_images([image_folder / "missing"])


def test_batch_csv_holds_every_file_with_probabilities_and_model_hash(package_path, image_folder, tmp_path):
    csv_path = tmp_path / "out.csv"
    result = run(BatchConfig(model=package_path, inputs=[image_folder], csv=csv_path))
    sha = hashlib.sha256(package_path.read_bytes()).hexdigest()
    predictor = open_model(package_path)
    rows = read_csv(csv_path)
    classes = ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]
    assert list(rows[0]) == ["file", "frame", "laterality", "predicted_class", *(f"p_{c}" for c in classes),
                             "referable_dr_probability", "model_validation", "model_sha256", "signature_verified",
                             "signer_trusted", "signer_fingerprint", "input_warnings", "error"]
    assert len(rows) == 5
    by_name = {row["file"].rsplit("/", 1)[-1]: row for row in rows}
    assert set(by_name) == GOOD | {"broken.png"}
    for name in GOOD:
        row = by_name[name]
        expected = predictor.predict_file(row["file"])
        assert row["predicted_class"] == expected.predicted_class
        for c in classes:
            assert float(row[f"p_{c}"]) == pytest.approx(expected.probabilities[c], abs=1e-6)
        assert float(row["referable_dr_probability"]) == pytest.approx(expected.referable_dr_probability, abs=1e-6)
        assert row["model_sha256"] == sha and row["signature_verified"] == "true" and row["error"] == ""
        assert row["model_validation"] == "validated"  # the test card's kappa 0.55 is above chance
        # The test key is nobody this (empty) hospital home trusts: valid, but the signer is unknown.
        assert row["signer_trusted"] == "false" and row["signer_fingerprint"] == predictor.signer_fingerprint
    broken = by_name["broken.png"]
    assert broken["predicted_class"] == "" and "broken.png" in broken["error"]
    assert [item.file for item in result.failures] == [broken["file"]]
    assert len(result.predictions) == 4 and result.model_sha256 == sha


def test_csv_cells_cannot_become_formulas(package_path, tmp_path, kit, monkeypatch):
    monkeypatch.chdir(tmp_path)
    kit.random_image(1).save(tmp_path / "=HYPERLINK(1).png")
    out = tmp_path / "out.csv"
    run(BatchConfig(model=package_path, inputs=[Path("=HYPERLINK(1).png")], csv=out))
    row = read_csv(out)[0]
    assert row["file"] == "'=HYPERLINK(1).png"


def test_html_report_is_self_contained_and_escaped(package_path, image_folder, tmp_path):
    report = tmp_path / "report.html"
    run(BatchConfig(model=package_path, inputs=[image_folder], report=report))
    text = report.read_text(encoding="utf-8")
    assert "&lt;b&gt;&amp;x.png" in text and "<b>&x.png" not in text
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    images = re.findall(r'src="data:image/jpeg;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(images) == 8  # a thumbnail and a heatmap for each of the 4 readable images
    for encoded in images:
        with Image.open(io.BytesIO(base64.b64decode(encoded))) as thumbnail:
            assert max(thumbnail.size) <= 160
    assert "broken.png" in text and "could not be read" in text
    assert "UNVERIFIED" not in text
    assert "Dopamine: federated, secure aggregation, DP-SGD" in text  # the model card is shown


def test_heatmap_files_mirror_the_input_folders(package_path, image_folder, tmp_path):
    out = tmp_path / "heat"
    result = run(BatchConfig(model=package_path, inputs=[image_folder], heatmaps=out))
    assert (out / "a.png.heatmap.png").is_file()
    assert (out / "sub" / "c.jpg.heatmap.png").is_file()
    assert not (out / "broken.png.heatmap.png").exists()
    with Image.open(out / "a.png.heatmap.png") as heat:
        assert heat.size == (32, 32) and heat.mode == "RGB"
    assert all(item.saliency_method == "grad-cam" for item in result.items if item.prediction)


def test_progress_reaches_one_and_cancel_stops_before_writing(package_path, image_folder, tmp_path):
    seen = []
    run(BatchConfig(model=package_path, inputs=[image_folder]), progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0

    token = CancelToken()
    done = []

    def progress(fraction, message):
        done.append(message)
        if len(done) == 3:
            token.cancel()

    csv_path = tmp_path / "never.csv"
    with pytest.raises(Cancelled):
        run(BatchConfig(model=package_path, inputs=[image_folder], csv=csv_path), progress=progress, cancel=token)
    assert not csv_path.exists()


def test_unverified_model_in_a_batch_only_with_the_flag(tampered_path, image_folder, tmp_path):
    with pytest.raises(SignatureError):
        run(BatchConfig(model=tampered_path, inputs=[image_folder], csv=tmp_path / "x.csv"))
    assert not (tmp_path / "x.csv").exists()
    report = tmp_path / "r.html"
    result = run(BatchConfig(model=tampered_path, inputs=[image_folder], csv=tmp_path / "x.csv", report=report,
                             allow_unverified=True, report_heatmaps=False))
    assert result.signature_verified is False
    assert all(row["signature_verified"] == "false" for row in read_csv(tmp_path / "x.csv"))
    assert "UNVERIFIED MODEL" in report.read_text(encoding="utf-8")


def test_the_signer_is_trusted_only_by_a_home_that_trusts_it(package_path, image_folder, tmp_path):
    from core.home import HospitalHome
    from core.models.trust import TrustStore

    files = [image_folder / "a.png"]
    unknown = run(BatchConfig(model=package_path, inputs=files, csv=tmp_path / "u.csv", report=tmp_path / "u.html",
                              home=tmp_path / "home", report_heatmaps=False))
    assert unknown.signature_verified and not unknown.signer_trusted
    assert read_csv(tmp_path / "u.csv")[0]["signer_trusted"] == "false"
    page = (tmp_path / "u.html").read_text(encoding="utf-8")
    assert "UNKNOWN SIGNER" in page and unknown.signer_fingerprint in page and "unverified claim" in page
    with pytest.raises(SignatureError, match="dopamine trust add"):
        run(BatchConfig(model=package_path, inputs=files, home=tmp_path / "home", require_trusted=True))

    signer = open_model(package_path).package.signer_public_key
    TrustStore(HospitalHome.at(tmp_path / "home")).add(signer, "Test sender", source=str(package_path))
    trusted = run(BatchConfig(model=package_path, inputs=files, csv=tmp_path / "t.csv", report=tmp_path / "t.html",
                              home=tmp_path / "home", require_trusted=True, report_heatmaps=False))
    assert trusted.signer_trusted and read_csv(tmp_path / "t.csv")[0]["signer_trusted"] == "true"
    page = (tmp_path / "t.html").read_text(encoding="utf-8")
    assert "UNKNOWN SIGNER" not in page and "Signed by a trusted signer (Test sender (added by you))" in page


def test_a_folder_without_images_is_an_error(package_path, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="No images found"):
        run(BatchConfig(model=package_path, inputs=[tmp_path / "empty"]))


def test_unwritable_outputs_fail_before_any_prediction(package_path, image_folder, tmp_path):
    from core.errors import InferenceError

    (tmp_path / "a_folder.csv").mkdir()
    (tmp_path / "a_file").write_text("x")
    messages = []
    for config in (BatchConfig(model=package_path, inputs=[image_folder], csv=tmp_path / "a_folder.csv"),
                   BatchConfig(model=package_path, inputs=[image_folder], heatmaps=tmp_path / "a_file"),
                   BatchConfig(model=package_path, inputs=[image_folder], report=tmp_path / "a_file" / "r.html")):
        with pytest.raises(InferenceError, match="Cannot write"):
            run(config, progress=lambda f, m: messages.append(m))
    assert not any("/" in m and ".png" in m for m in messages)  # no file was predicted
