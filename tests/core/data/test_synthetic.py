import json

import numpy as np
import pytest
from PIL import Image

from core.data import APTOS_LABEL_MIX, generate_fundus, hospital_style, open_dataset, write_demo_data
from core.data.synthetic import _counts_for_mix, _lesion_counts
from core.errors import Cancelled, DataError
from core.jobs import CancelToken


def test_same_seed_same_image_and_different_seed_differs():
    style = hospital_style(0, seed=1)
    a = generate_fundus(3, size=64, rng=np.random.default_rng(5), style=style)
    b = generate_fundus(3, size=64, rng=np.random.default_rng(5), style=style)
    c = generate_fundus(3, size=64, rng=np.random.default_rng(6), style=style)
    assert a.mode == "RGB" and a.size == (64, 64)
    assert a.tobytes() == b.tobytes() and a.tobytes() != c.tobytes()


def test_looks_like_a_fundus():
    image = np.asarray(generate_fundus(0, size=96, rng=np.random.default_rng(0), style=hospital_style(0, 0)))
    image = image.astype(float)
    corner = image[:6, :6].mean()
    centre = image[36:60, 36:60].mean(axis=(0, 1))
    assert corner < 20  # dark background outside the circular field of view
    assert centre[0] > centre[1] > centre[2]  # orange-red retina
    assert centre[0] > 60


def test_hospitals_differ_in_style():
    styles = [hospital_style(i, seed=0) for i in range(3)]
    assert len({s.colour_cast for s in styles}) == 3 and len({s.name for s in styles}) == 3
    assert hospital_style(1, seed=0) == styles[1]
    for style in styles:
        assert abs(sum(style.label_mix) - 1) < 1e-9
        assert max(abs(p - q) for p, q in zip(style.label_mix, APTOS_LABEL_MIX, strict=True)) < 0.12


def test_lesions_follow_the_grade():
    rng = np.random.default_rng(0)
    for _ in range(50):
        none = _lesion_counts(0, rng)
        assert none["microaneurysms"] == none["haemorrhages"] == 0
        mild = _lesion_counts(1, rng)
        assert 1 <= mild["microaneurysms"] <= 5
        assert mild["haemorrhages"] == mild["exudate_clusters"] == mild["cotton_wool"] == 0
        moderate = _lesion_counts(2, rng)
        assert moderate["haemorrhages"] >= 1 and len(moderate["quadrants"]) <= 3
        assert moderate["neovascular_tufts"] == 0
        severe = _lesion_counts(3, rng)
        assert severe["haemorrhages"] >= 8 and severe["quadrants"] == [0, 1, 2, 3]
        assert severe["neovascular_tufts"] == 0
        proliferative = _lesion_counts(4, rng)
        assert proliferative["neovascular_tufts"] >= 1 and proliferative["haemorrhages"] >= 8


def test_lesions_change_the_picture():
    style = hospital_style(0, 0)
    healthy = np.asarray(generate_fundus(0, size=128, rng=np.random.default_rng(2), style=style)).astype(int)
    sick = np.asarray(generate_fundus(4, size=128, rng=np.random.default_rng(2), style=style)).astype(int)
    # Same seed: same eye and vessels until the lesions are drawn, so a grade-4 picture differs locally.
    assert np.abs(healthy - sick).max() > 40


def test_counts_for_mix_are_exact():
    assert _counts_for_mix((0.5, 0.1, 0.25, 0.05, 0.1), 100) == [50, 10, 25, 5, 10]
    assert _counts_for_mix((0.5, 0.5, 0, 0, 0), 3) == [2, 1, 0, 0, 0]
    for total in (1, 37, 200, 1000):
        counts = _counts_for_mix(APTOS_LABEL_MIX, total)
        assert sum(counts) == total
        ideal = np.array(APTOS_LABEL_MIX) / sum(APTOS_LABEL_MIX) * total
        assert np.all(np.abs(np.array(counts) - ideal) < 1)


def test_demo_data_layout_labels_and_determinism(tmp_path):
    summary = write_demo_data(tmp_path / "a", hospitals=2, per_hospital=20, test_images=10, size=40, seed=3)
    write_demo_data(tmp_path / "b", hospitals=2, per_hospital=20, test_images=10, size=40, seed=3)
    out = tmp_path / "a"
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    for rel in files:
        assert (out / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel

    assert "NOT REAL PATIENT DATA" in (out / "SYNTHETIC_DATA.txt").read_text()
    assert json.loads((out / "summary.json").read_text())["synthetic"] is True
    assert sorted(p.name for p in out.iterdir()) == ["SYNTHETIC_DATA.txt", "hospital_01", "hospital_02",
                                                     "summary.json", "test"]
    pngs = [p for p in files if p.suffix == ".png"]
    assert len(pngs) == 50
    with Image.open(out / pngs[0]) as image:
        assert image.text["Synthetic"].startswith("true") and "not real patient data" in image.text["Synthetic"]
        assert image.size == (40, 40)
    assert all("synthetic" in p.name for p in pngs)

    for name in ("hospital_01", "hospital_02"):
        dataset = open_dataset(out / name)
        counts = np.bincount(dataset.labels, minlength=5).tolist()
        assert counts == summary["hospitals"][name]["class_counts"] and sum(counts) == 20
        expected = _counts_for_mix(hospital_style(int(name[-2:]) - 1, 3).label_mix, 20)
        assert counts == expected
    test = open_dataset(out / "test")
    assert np.bincount(test.labels, minlength=5).tolist() == _counts_for_mix(APTOS_LABEL_MIX, 10)

    other_seed = write_demo_data(tmp_path / "c", hospitals=2, per_hospital=20, test_images=10, size=40, seed=4)
    assert other_seed["hospitals"]["hospital_01"]["style"] != summary["hospitals"]["hospital_01"]["style"]


def test_label_mix_of_a_bigger_federation_is_close_to_aptos():
    totals = np.zeros(5)
    for index in range(10):
        totals += _counts_for_mix(hospital_style(index, seed=0).label_mix, 200)
    mix = totals / totals.sum()
    assert np.allclose(mix, APTOS_LABEL_MIX, atol=0.03)


def test_refuses_bad_requests(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        write_demo_data(tmp_path / "full", hospitals=1, per_hospital=1, test_images=0, size=32)
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep me"
    with pytest.raises(DataError):
        write_demo_data(tmp_path / "x", hospitals=0)
    with pytest.raises(DataError):
        generate_fundus(5, size=64, rng=np.random.default_rng(0), style=hospital_style(0, 0))


def test_cancel_and_progress(tmp_path):
    token = CancelToken()
    seen = []

    def progress(fraction, message):
        seen.append(fraction)
        if len(seen) == 3:
            token.cancel()

    with pytest.raises(Cancelled):
        write_demo_data(tmp_path / "d", hospitals=1, per_hospital=10, test_images=0, size=32,
                        progress=progress, cancel=token)
    assert len(seen) == 3
