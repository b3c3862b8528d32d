"""Data page: background validation of a real folder, problems with reasons, balance, thumbnails."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMessageBox


def _check(window, qtbot, path: Path):
    page = window.show_page("data")
    page.check(path)
    qtbot.waitUntil(lambda: page._job is not None and not page._job.running, timeout=30000)
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
    assert "20 image(s) are smaller than 224 px and will be enlarged" in page.summary.text()

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
    page.progress.cancel()
    qtbot.waitUntil(lambda: not page._job.running, timeout=30000)
    assert page._job.was_cancelled  # cancelled before the first of 300 files was read
    assert "cancelled" in page.summary.text().lower() and not page.progress.isVisible()
    assert page.report is None and window.context.settings.dataset is None
