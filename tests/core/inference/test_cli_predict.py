"""``dopamine predict``: JSON output, outputs written, forged models refused unless allowed."""

from __future__ import annotations

import json

from core.cli import main


def test_json_has_one_object_per_image(package_path, image_folder, capsys):
    code = main(["predict", str(package_path), str(image_folder / "a.png"), str(image_folder / "sub"), "--json"])
    out, err = capsys.readouterr()
    assert code == 0
    rows = json.loads(out)
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "c.jpg"]
    for row in rows:
        assert {"file", "predicted_class", "probabilities", "model_sha256", "signature_verified"} <= set(row)
        assert row["predicted_class"] in row["probabilities"]
        assert abs(sum(row["probabilities"].values()) - 1.0) < 1e-5
        assert row["signature_verified"] is True
        # A valid signature by a key this hospital does not trust: the card's claims are unverified.
        assert row["signer_trusted"] is False and len(row["signer_fingerprint"].split()) == 16
    assert "unknown signer" in err and "dopamine trust add" in err


def test_csv_report_and_heatmaps_with_a_corrupt_file(package_path, image_folder, tmp_path, capsys):
    code = main(["predict", str(package_path), str(image_folder), "--csv", str(tmp_path / "o.csv"),
                 "--report", str(tmp_path / "o.html"), "--heatmaps", str(tmp_path / "h")])
    out, err = capsys.readouterr()
    assert code == 0
    assert (tmp_path / "o.csv").is_file() and (tmp_path / "o.html").is_file()
    assert (tmp_path / "h" / "a.png.heatmap.png").is_file()
    assert "broken.png" in err and "skipped" in err
    assert "a.png: " in out


def test_forged_model_refused_then_allowed_and_marked(tampered_path, image_folder, capsys):
    code = main(["predict", str(tampered_path), str(image_folder / "a.png"), "--json"])
    out, err = capsys.readouterr()
    assert code == 1 and out == ""
    assert err.startswith("error: ") and "--allow-unverified" in err and "Traceback" not in err

    code = main(["predict", str(tampered_path), str(image_folder / "a.png"), "--json", "--allow-unverified"])
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out)[0]["signature_verified"] is False
    assert "does NOT verify" in err


def test_only_unreadable_images_exit_1(package_path, image_folder, capsys):
    code = main(["predict", str(package_path), str(image_folder / "broken.png"), "--json"])
    out, _ = capsys.readouterr()
    assert code == 1
    assert "error" in json.loads(out)[0]


def test_not_a_package_is_a_clean_error(image_folder, tmp_path, capsys):
    (tmp_path / "m.dpm").write_bytes(b"PK\x03\x04 definitely not a zip")
    code = main(["predict", str(tmp_path / "m.dpm"), str(image_folder / "a.png")])
    _, err = capsys.readouterr()
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err


def test_unwritable_csv_is_a_clean_error(package_path, image_folder, tmp_path, capsys):
    (tmp_path / "out.csv").mkdir()
    code = main(["predict", str(package_path), str(image_folder), "--csv", str(tmp_path / "out.csv")])
    _, err = capsys.readouterr()
    assert code == 1 and err.splitlines()[-1].startswith("error: Cannot write") and "Traceback" not in err
