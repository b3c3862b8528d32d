"""Data page: background validation of a real folder, problems with reasons, balance, thumbnails."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QApplication, QMessageBox


def _check(window, qtbot, path: Path):
    page = window.show_page("data")
    page.check(path)
    qtbot.waitUntil(lambda: page._job is not None and not page._job.running, timeout=30000)
    # The job marks itself not running in the first slot of its `finished`; qtbot's wait may look before the
    # page's own slots (progress bar, Check button) ran. They were all queued at the emit: deliver them.
    QApplication.processEvents()
    return page


def test_a_folder_with_a_corrupt_file_lists_the_problem(window, qtbot, image_folder):
    page = _check(window, qtbot, image_folder)
    table = page.problems
    rows = [(table.item(r, 0).text(), table.item(r, 1).text(), table.item(r, 2).text())
            for r in range(table.rowCount())]
    assert rows[0][0] == "broken_scan.png"  # skipped files are listed before "small image" notes
    assert rows[0][1] == "Damaged (file cut short)" and "truncated" in rows[0][2]
    assert page.summary.kind == "warning"
    assert "20 of 21 files can be used" in page.summary.text() and "1 problem(s) found" in page.summary.text()
    # One line for the small images, at the model input the Train page is set to (224 px by default).
    assert "20 image(s) are smaller than the model input of 224 px (the smallest: 40 px)" in page.summary.text()
    assert [table.item(r, 1).text() for r in range(table.rowCount())].count("Small image (used, enlarged)") == 1

    assert page.chart.counts() == {"No DR": 10, "Mild": 0, "Moderate": 10, "Severe": 0, "Proliferative DR": 0}
    assert "No images for: Mild, Severe, Proliferative DR" in page.balance_note.text()
    qtbot.waitUntil(lambda: page.thumbnails.count() == 12, timeout=20000)
    assert set(page.thumbnails.captions()) == {"No DR", "Moderate"}

    # Remembered: saved in the settings and shared with the other pages.
    assert Path(window.context.settings.dataset) == image_folder
    assert window.context.dataset_report.usable == 20
    assert "20 usable images" in window.pages["home"].dataset_label.text()
    assert "20 usable images" in window.pages["train"].data_note.text()


def test_a_folder_without_images_is_explained(window, qtbot, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    page = _check(window, qtbot, empty)
    assert page.summary.kind == "error"
    qtbot.waitUntil(lambda: window.findChild(QMessageBox, "errorDialog") is not None, timeout=3000)
    assert window.context.settings.dataset is None


def test_the_check_can_be_cancelled(window, qtbot, tmp_path, make_image_folder):
    big = make_image_folder(tmp_path / "big", per_class=150, size=64)
    page = window.show_page("data")
    page.check(big)
    # Wait for the job's `finished` to reach a slot connected after the page's and the progress bar's, so that
    # all of theirs have run (waiting for `running` alone could look between two of them).
    with qtbot.waitSignal(page._job.finished, timeout=30000):
        page.progress.cancel()
    assert not page._job.running and page._job.was_cancelled  # cancelled before the first of 300 files was read
    assert "cancelled" in page.summary.text().lower() and not page.progress.isVisible()
    assert page.report is None and window.context.settings.dataset is None


def test_make_up_and_before_after_preview(window, qtbot, tmp_path):
    from core.data.dicom_writer import write_dicom
    from core.data.synthetic import camera_photograph

    root = tmp_path / "eyes"
    (root / "0").mkdir(parents=True)
    camera_photograph(0, width=400, height=300, centre=(230, 150), radius=130, seed=1).save(root / "0" / "a_left.png")
    camera_photograph(0, width=300, height=300, centre=(150, 150), radius=200, seed=2).save(root / "0" / "full.png")
    photo = np.asarray(camera_photograph(2, width=320, height=240, centre=(160, 120), radius=110, seed=3))
    write_dicom(root / "2" / "stereo.dcm", [photo, photo[:, ::-1].copy()], syntax="jpeg_baseline",
                ImageLaterality="R", Manufacturer="Topcon", ManufacturerModelName="TRC-NW8")
    page = _check(window, qtbot, root)
    assert "4 images from 3 of 3 files can be used" in page.summary.text()
    make_up = page.make_up_label.text()
    assert "Cameras/devices: Topcon TRC-NW8 2, unknown 2" in make_up
    assert "Eyes: left 1, right 2" in make_up
    qtbot.waitUntil(lambda: len(page.preview.pairs) == 4, timeout=20000)
    assert {pair.note for pair in page.preview.pairs} == {"centre crop"}
    assert all((pair.after.width(), pair.after.height()) == (150, 150) for pair in page.preview.pairs)

    page.preview.fundus_check.setChecked(True)
    qtbot.waitUntil(lambda: len(page.preview.pairs) == 4 and page.preview.pairs[0].note != "centre crop",
                    timeout=20000)
    notes = {pair.name: pair.note for pair in page.preview.pairs}
    assert notes["a_left.png"] == "retina found"
    assert notes["full.png"].startswith("plain crop: no dark surround")
    assert notes["stereo.dcm [frame 1]"] == "retina found"
    # The crop moved the off-centre retina into the middle: the centre of "after" is retina, not border.
    after = page.preview.pairs[0].after
    assert after.pixelColor(75, 75).red() > 60
