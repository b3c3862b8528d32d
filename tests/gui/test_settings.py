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


def _cache_some_images(context, make_image_folder, tmp_path) -> int:
    from core.data import Preprocessing, Sample, load_tensors

    folder = make_image_folder(tmp_path / "imgs", per_class=3)
    samples = [Sample(p, 0) for p in sorted(folder.rglob("*.png"))]
    load_tensors(samples, Preprocessing(size=16), cache_dir=context.image_cache)
    return len(samples)


def test_the_home_folder_and_its_image_cache_size_and_clear_button(window, qtbot, tmp_path, make_image_folder,
                                                                   monkeypatch):
    from PySide6.QtWidgets import QLabel

    from gui import dialogs

    context = window.context
    count = _cache_some_images(context, make_image_folder, tmp_path)
    assert context.image_cache == context.home.root / "cache" / "images"
    page = window.show_page("settings")
    labels = [w.text() for w in page.findChildren(QLabel)]
    assert "Hospital home folder" in labels and "Work folder" not in labels
    card = page.image_cache
    qtbot.waitUntil(lambda: card.size is not None and card.size[0] == count, timeout=10000)
    assert f"{count} decoded image(s)" in card.summary.text() and card.clear_button.isEnabled()

    asked = []
    monkeypatch.setattr(dialogs, "confirm", lambda *a, **k: asked.append(a[2]) or False)
    card.clear()
    assert asked and "rebuilt" in asked[0] and "not touched" in asked[0]
    assert len(list(context.image_cache.rglob("*.npy"))) == count  # "no" keeps everything

    monkeypatch.setattr(dialogs, "confirm", lambda *a, **k: True)
    card.clear()
    qtbot.waitUntil(lambda: card.size == (0, 0), timeout=10000)
    assert not list(context.image_cache.rglob("*.npy"))
    assert "Empty" in card.summary.text() and not card.clear_button.isEnabled()


def test_every_path_comes_from_the_hospital_home(window, tmp_path):
    from core.home import HospitalHome

    page = window.show_page("settings")
    page.work_folder.set_path(tmp_path / "hospital-home", emit=True)
    home = HospitalHome(tmp_path / "hospital-home")
    context = window.context
    assert context.home == home
    assert (context.ledger_path, context.audit_log_path, context.identity_key_path, context.models_folder,
            context.federations_folder, context.image_cache) == (
        home.ledger, home.audit_log, home.identity_key, home.models, home.federations, home.image_cache)
    assert page.locations.value("Audit log (signed)") == str(home.audit_log)
    assert page.locations.value("Image cache (safe to delete)") == str(home.image_cache)


def test_the_home_page_says_what_is_kept_on_disk(window):
    page = window.show_page("home")
    from gui.widgets.common import Banner

    kept = page.kept_on_disk.text()
    assert "decoded" in kept and "image cache" in kept and "ledger" in kept and "audit log" in kept
    texts = " ".join(banner.text() for banner in page.findChildren(Banner))
    assert "nothing is copied" not in texts and "No image is uploaded" in texts
    assert str(window.context.home.root) in page.home_label.text()


def test_the_https_proxy_is_kept_in_the_hospital_home(window, tmp_path, monkeypatch):
    from core.federation.network import load_network_settings
    from gui.pages import settings as settings_page

    page = window.show_page("settings")
    page.work_folder.set_path(tmp_path / "home-a", emit=True)
    home = window.context.home
    assert page.proxy.text() == "" and page.proxy.placeholderText().startswith("none")
    page.proxy.setText("proxy.hospital.example:3128")
    page.proxy.editingFinished.emit()
    # Normalized and saved where `dopamine join` and the app's own joins read it.
    assert page.proxy.text() == "http://proxy.hospital.example:3128"
    assert load_network_settings(home).proxy == "http://proxy.hospital.example:3128"
    shown = []
    monkeypatch.setattr(settings_page, "show_error", lambda parent, exc: shown.append(str(exc)))
    page.proxy.setText("socks5://proxy:1080")
    page.proxy.editingFinished.emit()
    assert shown and "http://host:port" in shown[0]
    assert load_network_settings(home).proxy == "http://proxy.hospital.example:3128"  # the refused one not kept
    page.work_folder.set_path(tmp_path / "home-b", emit=True)  # another home: its own (no) proxy
    assert page.proxy.text() == ""


def test_the_compute_device_is_kept_shown_and_handed_to_every_job(qtbot, tmp_path, monkeypatch):
    """Settings' Device (Auto, CPU, CUDA) survives a restart, says what it computes on here (this computer
    has no CUDA GPU), and goes with the training, federation and comparison jobs to their child processes."""
    import torch

    from gui import child_jobs
    from gui.federation_jobs import join

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    app = application([])
    first = create_window(app)
    qtbot.addWidget(first)
    first.show()
    assert first.context.settings.device == "auto"
    page = first.show_page("settings")
    qtbot.waitUntil(lambda: page.device_in_use.text() == "CPU (no CUDA GPU found)", timeout=20000)
    page.device.setCurrentIndex(page.device.findData("cuda"))
    qtbot.waitUntil(lambda: "no CUDA GPU was found; choose Auto or CPU" in page.device_in_use.text(), timeout=20000)
    page.device.setCurrentIndex(page.device.findData("cpu"))
    qtbot.waitUntil(lambda: page.device_in_use.text() == "CPU (chosen)", timeout=20000)
    first.close()

    second = create_window(app)
    qtbot.addWidget(second)
    assert second.context.settings.device == "cpu"
    assert second.pages["settings"].device.currentData() == "cpu"
    assert load_settings()[0].device == "cpu"

    train = second.show_page("train")
    train.data_picker.set_path(tmp_path)
    assert train.config().device == "cpu"
    compare = second.show_page("compare")
    assert compare.settings()["device"] == "cpu"
    sent = []
    monkeypatch.setattr(child_jobs, "run_child", lambda job, args, **kwargs: sent.append((job, args)))
    review = type("Review", (), {"path": tmp_path / "invitation.json", "accountant": "rdp"})()
    join(review, data=tmp_path, home=tmp_path, threads=1, accept_roster=None, progress=None, cancel=None,
         on_event=None, device=second.context.settings.device)
    assert sent[0][0] == "join" and sent[0][1]["config"]["device"] == "cpu"
    from core.federation.client import JoinConfig

    assert JoinConfig(**{**sent[0][1]["config"], "invitation": Path("i")}).device == "cpu"  # what the child builds

    page = second.pages["settings"]
    page.restore_defaults()
    assert second.context.settings.device == "auto" and page.device.currentData() == "auto"


def test_an_unknown_device_in_the_settings_file_is_refused():
    try:
        save_settings(AppSettings(device="tpu"))
    except Exception as exc:  # noqa: BLE001
        assert "Device" in str(exc) and "Settings" in str(exc)
    else:
        raise AssertionError("an unknown device was saved")
