import json

from core.cli import main


def test_demo_data_then_inspect_json(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo-data", str(out), "--hospitals", "2", "--per-hospital", "12", "--test-images", "6",
                 "--size", "48", "--seed", "2"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "SYNTHETIC" in printed and "hospital_02" in printed
    assert (out / "SYNTHETIC_DATA.txt").exists()
    assert len(list((out / "hospital_01").rglob("*.png"))) == 12
    assert len(list((out / "test").rglob("*.png"))) == 6

    assert main(["inspect", str(out / "hospital_01"), "--json", "--min-size", "64"]) == 0
    report = json.loads(capsys.readouterr().out)  # stdout holds only the JSON
    assert report["layout"] == "folders" and report["usable"] == 12
    assert sum(report["class_counts"].values()) == 12
    assert report["problem_counts"]["too_small"] == 12  # 48 px < 64 px
    assert report["duplicates"] == []


def test_demo_data_json_and_inspect_text(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--hospitals", "1", "--per-hospital", "5", "--test-images", "0",
                 "--size", "40", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["synthetic"] is True and summary["hospitals"]["hospital_01"]["images"] == 5
    assert main(["inspect", str(out / "hospital_01"), "--min-size", "32"]) == 0
    text = capsys.readouterr().out
    assert "Usable images: 5" in text and "No problems found." in text


def test_inspect_csv_and_errors(tmp_path, capsys, write_image):
    write_image(tmp_path / "imgs" / "a.png", size=(30, 30))
    labels = tmp_path / "labels.csv"
    labels.write_text("id_code,diagnosis\na,2\nb,1\n")
    assert main(["inspect", str(tmp_path / "imgs"), "--labels-csv", str(labels), "--json", "--min-size", "16"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["layout"] == "csv" and report["class_counts"]["Moderate"] == 1
    assert [p["kind"] for p in report["problems"]] == ["no_image_for_csv_row"]

    assert main(["inspect", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    last_line = err.strip().splitlines()[-1].split("\r")[-1]  # after the progress bar's carriage returns
    assert last_line.startswith("error: ") and "does not exist" in last_line and "Traceback" not in err
    assert main(["demo-data", str(tmp_path / "imgs"), "--per-hospital", "1"]) == 1
    assert "not empty" in capsys.readouterr().err
