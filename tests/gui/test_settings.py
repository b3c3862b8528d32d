"""Settings persist across restarts (DOPAMINE_HOME points at a temporary folder in every test)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QMessageBox

from gui.app import application, create_window
from gui.settings import AppSettings, load_settings, save_settings, settings_path


def test_settings_and_geometry_survive_a_restart(qtbot, tmp_path, monkeypatch):
    app = application([])
    first = create_window(app)
    qtbot.addWidget(first)
    first.show()
    page = first.show_page("settings")
    work = tmp_path / "work"
    page.work_folder.set_path(work, emit=True)
    page.cpu_threads.setValue(1)
    page.accountant.setCurrentIndex(page.accountant.findData("prv"))
    page.theme.setCurrentIndex(page.theme.findData("dark"))
    first.resize(1300, 820)
    first.show_page("privacy")
    first.close()
    assert settings_path().exists()
    saved_geometry = bytes(first.saveGeometry().toBase64().data()).decode()

    # The offscreen screen is 800 px wide, so Qt clamps sizes on restore: check what is handed back.
    from gui.main_window import MainWindow

    restored_with = []
    original = MainWindow.restoreGeometry
    monkeypatch.setattr(MainWindow, "restoreGeometry",
                        lambda self, data: restored_with.append(bytes(data.toBase64().data()).decode())
                        or original(self, data))
    second = create_window(app)
    qtbot.addWidget(second)
    settings = second.context.settings
    assert (Path(settings.work_folder), settings.cpu_threads, settings.accountant, settings.theme) == (
        work, 1, "prv", "dark")
    assert second.context.ledger_path == work / "privacy-ledger.sqlite"
    assert second.current_page == "privacy"
    assert restored_with == [saved_geometry]
    restored = second.pages["settings"]
    assert restored.theme.currentData() == "dark" and restored.accountant.currentData() == "prv"
    second.context.theme_changed.emit("light")  # leave the shared QApplication in the light theme


def test_defaults_come_from_core_paths():
    from core import paths

    settings = AppSettings()
    assert Path(settings.work_folder) == paths.data_dir()
    assert Path(settings.data_folder).parent == paths.data_dir()
    assert settings.cpu_threads >= 1 and settings.theme == "light"


def test_unreadable_settings_fall_back_to_defaults_with_a_message(qtbot):
    settings_path().parent.mkdir(parents=True, exist_ok=True)
    settings_path().write_text("theme = [broken", encoding="utf-8")
    settings, warning = load_settings()
    assert settings == AppSettings() and "could not be read" in warning

    window = create_window(application([]))
    qtbot.addWidget(window)
    qtbot.waitUntil(lambda: window.findChild(QMessageBox, "errorDialog") is not None, timeout=3000)
    assert "could not be read" in window.findChild(QMessageBox, "errorDialog").text()


def test_invalid_values_are_refused_before_saving():
    bad = AppSettings(theme="neon")
    try:
        save_settings(bad)
    except Exception as exc:  # noqa: BLE001
        assert "Theme" in str(exc)
    else:
        raise AssertionError("an unknown theme was saved")
    assert not settings_path().exists()
