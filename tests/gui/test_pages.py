"""Every page builds, navigation works, `dopamine gui` starts the app, start-up stays light."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from PySide6.QtWidgets import QWidget

from gui.main_window import NAVIGATION, LazyPage
from gui.widgets.common import Banner

REPO = Path(__file__).resolve().parents[2]


def test_every_page_builds_and_can_be_shown(window, qtbot):
    labels = [window.navigation.item(i).text() for i in range(window.navigation.count())]
    assert labels == ["Home", "Data", "Train locally", "Federation", "Host a federation", "Privacy",
                      "Compare modes", "Models", "Viewer", "Settings", "Activity"]
    for key, _text, _icon in NAVIGATION:
        page = window.show_page(key)
        qtbot.wait(5)
        assert window.current_page == key
        assert window.stack.currentWidget() is page
        assert isinstance(page, QWidget)
    assert isinstance(window.pages["viewer"], LazyPage)
    assert window.pages["viewer"].page is not None  # built when first shown


def test_home_actions_navigate(window, qtbot):
    home = window.pages["home"]
    home.train_button.click()
    assert window.current_page == "train"
    home.join_button.click()
    assert window.current_page == "federation"


def test_viewer_slot_opens_models(window, qtbot, tmp_path):
    opened = []

    class FakeViewer(QWidget):
        def open_model(self, path):
            opened.append(path)

    lazy = window.pages["viewer"]
    assert lazy.page is None  # the viewer (and torch) load only when first needed
    lazy._factory = FakeViewer
    window.context.open_in_viewer(tmp_path / "m.dpm")
    assert window.current_page == "viewer"
    assert opened == [tmp_path / "m.dpm"]
    assert isinstance(window.viewer, FakeViewer)


def test_a_page_that_fails_to_build_shows_an_error_not_a_crash(qtbot):
    def broken():
        raise RuntimeError("viewer exploded")

    lazy = LazyPage(broken)
    qtbot.addWidget(lazy)
    page = lazy.ensure()
    assert isinstance(page, Banner) and "viewer exploded" in page.text()
    assert isinstance(lazy.load_error, RuntimeError)


def test_start_up_does_not_import_torch(tmp_path):
    """Start-up stays light: torch and Opacus load later, off the GUI thread (the time itself is measured by
    benchmarks/gui_latency.py)."""
    code = textwrap.dedent("""
        import sys
        from gui.app import application, create_window
        app = application([])
        window = create_window(app)
        window.show()
        app.processEvents()
        heavy = sorted(m for m in ("torch", "opacus") if m in sys.modules)
        print(','.join(heavy) or '-')
    """)
    env = {"QT_QPA_PLATFORM": "offscreen", "DOPAMINE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60, check=True)
    heavy = out.stdout.strip()
    assert heavy == "-", f"start-up imported {heavy}"
