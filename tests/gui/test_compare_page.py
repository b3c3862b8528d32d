"""Compare modes page: runs `dopamine compare --quick` as a background child job and shows its results."""

from __future__ import annotations

import threading


def test_a_quick_comparison_runs_off_the_ui_thread_and_shows_figure_and_table(window, qtbot, monkeypatch):
    import gui.pages.compare as compare_page

    threads = []
    real_run = compare_page.run_compare

    def recording_run(config, *, progress, cancel):
        threads.append(threading.current_thread())
        return real_run(config, progress=progress, cancel=cancel)

    monkeypatch.setattr(compare_page, "run_compare", recording_run)
    page = window.show_page("compare")
    page.quick.setChecked(True)
    page.seeds.setValue(1)
    page.start()
    assert not page.run_button.isEnabled() and page.progress.isVisible()
    qtbot.waitUntil(lambda: page.last_result is not None, timeout=180000)
    assert threads and threads[0] is not threading.main_thread()
    assert page.run_button.isEnabled()
    assert page.table.rowCount() == 5
    assert [page.table.item(r, 0).text() for r in range(5)] == ["C", "CDP", "F", "FPDP", "FSCDP"]
    assert page.table.item(1, 3).text() not in ("∞", "") and page.table.item(0, 3).text() == "∞"
    assert page.figure.pixmap() is not None and not page.figure.pixmap().isNull()
    assert "Synthetic images" in page.status.text() and page.status.kind == "ok"
    folder = window.context.home.comparisons
    assert len(list(folder.iterdir())) == 1 and (next(folder.iterdir()) / "report.html").exists()
    assert not window.context.ledger_path.exists()  # nothing charged: the comparison sends nothing


def test_the_same_settings_resume_into_the_same_folder(window, tmp_path):
    from gui.compare_jobs import comparison_folder

    page = window.show_page("compare")
    first = comparison_folder(tmp_path, page.settings())
    page.seeds.setValue(page.seeds.value() + 2)  # more runs of the same comparison: resumed, not restarted
    assert comparison_folder(tmp_path, page.settings()) == first
    page.hospitals.setValue(4)
    assert comparison_folder(tmp_path, page.settings()) != first


def test_no_mode_chosen_is_refused_before_anything_starts(window, monkeypatch):
    import gui.pages.compare as compare_page

    shown = []
    monkeypatch.setattr(compare_page, "show_error", lambda parent, exc: shown.append(str(exc)))
    page = window.show_page("compare")
    for box in page.mode_boxes.values():
        box.setChecked(False)
    page.start()
    assert page.job is None and page.run_button.isEnabled()
    assert shown and "modes" in shown[0]
