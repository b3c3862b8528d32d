"""Data page journeys from the issue: the parent of the demo data is not taken for one hospital's images,
a failed check leaves nothing of the previous folder, small images are one line at the real model input."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QApplication

from gui.context import ExpectedImages


def _check(window, qtbot, path: Path):
    page = window.show_page("data")
    page.check(path)
    qtbot.waitUntil(lambda: page._job is not None and not page._job.running, timeout=30000)
    # The job marks itself not running in the first slot of its `finished`; qtbot's wait may look before the
    # page's own slots (progress bar, Check button) ran. They were all queued at the emit: deliver them.
    QApplication.processEvents()
    return page


def _demo_layout(root: Path, make_image_folder) -> Path:
    for seed, part in enumerate(("hospital_01", "hospital_02", "test")):
        make_image_folder(root / part, classes=("0", "2"), per_class=3, size=40, seed=seed)
    return root


def test_the_parent_folder_of_the_demo_data_is_not_shown_in_green(window, qtbot, tmp_path, make_image_folder):
    demo = _demo_layout(tmp_path / "demo", make_image_folder)
    page = _check(window, qtbot, demo)
    text = page.summary.text()
    assert page.summary.kind == "warning", text  # it was "ok" (green) before
    assert "probably not the folder to train or join with" in text
    assert "hospital_01 itself holds folders of images (0, 2)" in text
    assert "named like a held-out test set" in text and "not DR grades" in text
    assert "hospital_01, hospital_02, test" in text

    # One hospital's folder is fine.
    page = _check(window, qtbot, demo / "hospital_01")
    assert "probably not the folder" not in page.summary.text()

    # Reviewing a federation makes its classes the ones to check against.
    window.context.set_expected_images("federation", ExpectedImages(
        size=32, classes=["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"],
        source="the plan of Retina network"))
    page = _check(window, qtbot, demo)
    assert "not the classes of the plan of Retina network" in page.summary.text()
    assert "Checked for a model input of 32 px" in page.expected_note.text()


def test_a_failed_check_leaves_nothing_of_the_previous_folder(window, qtbot, tmp_path, image_folder):
    page = _check(window, qtbot, image_folder)
    qtbot.waitUntil(lambda: page.thumbnails.count() == 12, timeout=20000)
    assert page.chart.counts() and page.problems.rowCount() > 0

    page = _check(window, qtbot, tmp_path / "no-such-folder")
    assert page.summary.kind == "error" and "does not exist" in page.summary.text()
    assert f"The images chosen before ({image_folder})" in page.summary.text()
    assert page.chart.counts() == {} and page.thumbnails.count() == 0 and page.problems.rowCount() == 0
    assert page.make_up_label.text().startswith("Check a collection") and page.preview.pairs == []
    assert page.report is None and not page.save_report_button.isEnabled()
    # Neither the progress bar nor its Cancel button stays, and the check can be run again.
    assert not page.progress.isVisible() and page.check_button.isEnabled()
    assert Path(window.context.settings.dataset) == image_folder


def test_small_images_are_counted_at_the_input_size_of_the_model_to_train(window, qtbot, image_folder):
    context = window.context
    context.set_expected_images("federation", ExpectedImages(size=48, classes=None, source="the plan of X"))
    page = _check(window, qtbot, image_folder)  # 40 px images
    assert "20 image(s) are smaller than the model input of 48 px" in page.summary.text()
    # A 32 px federation: none is small; the same report is counted again, nothing is re-read.
    context.set_expected_images("federation", ExpectedImages(size=32, classes=None, source="the plan of X"))
    assert "smaller than the model input" not in page.summary.text()
    kinds = [page.problems.item(r, 1).text() for r in range(page.problems.rowCount())]
    assert "Small image (used, enlarged)" not in kinds
    context.set_expected_images("federation", None)  # back to the Train page's 224 px
    assert "20 image(s) are smaller than the model input of 224 px" in page.summary.text()


def test_the_data_report_export_is_confirmed(window, qtbot, image_folder, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    page = _check(window, qtbot, image_folder)
    page.save_report(tmp_path / "report.json")
    box = window.findChild(QMessageBox, "savedDialog")
    assert box is not None and str(tmp_path / "report.json") in box.text()
    assert (tmp_path / "report.json").read_text().startswith("{")
