import json

import pytest

from core.data import validate
from core.errors import Cancelled
from core.jobs import CancelToken


def by_kind(report):
    found = {}
    for problem in report.problems:
        found.setdefault(problem.kind, []).append(problem.path.rsplit("/", 1)[-1])
    return {k: sorted(v) for k, v in found.items()}


def test_report_lists_every_problem_with_a_reason(messy):
    report = validate(messy, min_size=64)
    assert by_kind(report) == {
        "duplicate": ["copy_of_good0.png"],
        "truncated": ["cut.png"],
        "not_image": ["fake.jpg", "notes.txt"],
        "too_small": ["small.png"],
        "no_label": ["stray.png"],
    }
    assert all(p.reason for p in report.problems)
    reasons = {p.path.rsplit("/", 1)[-1]: p.reason for p in report.problems}
    assert "30x50" in reasons["small.png"] and "64" in reasons["small.png"]
    assert "good0.png" in reasons["copy_of_good0.png"] and "different label" in reasons["copy_of_good0.png"]
    assert not reasons["cut.png"].startswith("cut.png")  # the name is in the path column already

    assert report.duplicates == [[str(messy / "0" / "good0.png"), str(messy / "2" / "copy_of_good0.png")]]
    assert report.class_counts == {"No DR": 2, "Mild": 0, "Moderate": 2, "Severe": 0, "Proliferative DR": 0}
    # too-small images stay usable (they are upscaled); duplicates and broken files do not
    assert sorted(s.path.name for s in report.usable_samples) == ["good0.png", "good1.jpg", "scan.dcm", "small.png"]
    assert report.usable == 4
    assert report.total_files == 9


def test_json_and_text(messy):
    report = validate(messy, min_size=64)
    data = json.loads(report.to_json())
    assert "usable_samples" not in data
    assert data["usable"] == 4 and data["min_size"] == 64 and data["layout"] == "folders"
    assert data["problem_counts"]["not_image"] == 2
    assert {p["kind"] for p in data["problems"]} == {"duplicate", "truncated", "not_image", "too_small", "no_label"}
    text = report.to_text()
    assert "Usable images: 4" in text and "Truncated files" in text and "fake.jpg" in text
    assert "Moderate" in text and "64 px" in text


def test_text_lists_at_most_a_few_per_kind(tmp_path, write_image):
    for i in range(31):  # one image and 30 copies of it
        write_image(tmp_path / "0" / f"s{i}.png", size=(20, 20), seed=0)
    text = validate(tmp_path, min_size=32).to_text(max_listed=5)
    assert "and 25 more" in text
    # Small images are one line, however many there are.
    assert "1 image(s) are smaller than the model input of 32 px" in text and "upscaled" not in text


def test_csv_layout_report(tmp_path, write_image):
    write_image(tmp_path / "train_images" / "a.png", size=(70, 70))
    write_image(tmp_path / "train_images" / "extra.png", size=(70, 70), seed=1)
    (tmp_path / "train.csv").write_text("id_code,diagnosis\na,3\nghost,1\n")
    report = validate(tmp_path, min_size=64)
    assert report.layout == "csv"
    assert by_kind(report) == {"no_image_for_csv_row": ["ghost"], "no_label": ["extra.png"]}
    assert report.class_counts["Severe"] == 1 and report.usable == 1


def test_progress_and_cancel(messy):
    seen = []
    validate(messy, progress=lambda f, m: seen.append(f))
    assert seen[-1] == 1.0 and all(0 <= f <= 1 for f in seen)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        validate(messy, cancel=token)
