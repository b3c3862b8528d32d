"""No detours: plots never take the mouse wheel and count rounds in whole numbers; file dialogs start in the
last folder used for that purpose (or the hospital's images folder), never in one that does not exist."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QWheelEvent
from PySide6.QtWidgets import QApplication, QFileDialog

from gui.file_dialogs import FolderMemory, open_folder
from gui.settings import AppSettings, load_settings
from gui.widgets.path_picker import PathPicker
from gui.widgets.plots import CountAxis, LivePlot


def _wheel(widget, target, steps: int = -3) -> QWheelEvent:
    centre = QPointF(widget.width() / 2, widget.height() / 2)
    event = QWheelEvent(centre, QPointF(widget.mapToGlobal(QPoint(int(centre.x()), int(centre.y())))), QPoint(),
                        QPoint(0, 120 * steps), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    QApplication.sendEvent(target, event)
    return event


def test_the_wheel_over_a_plot_is_left_to_the_page(window, qtbot):
    """The plot declines the wheel (a real, spontaneous wheel event then goes to the page, which scrolls),
    and its view stays on the data; before, the wheel zoomed it and could hide every point."""
    page = window.show_page("train")
    plot = page.loss_plot
    for epoch in range(1, 6):
        plot.append("training", epoch, 1.0 / epoch)
    qtbot.wait(50)
    before = plot.getViewBox().viewRange()
    event = _wheel(plot, plot.viewport())  # where a real wheel event arrives
    assert not event.isAccepted()
    assert plot.getViewBox().viewRange() == before
    assert not plot.getViewBox().state["mouseEnabled"][0] and not plot.getViewBox().state["mouseEnabled"][1]


def test_round_and_epoch_axes_have_whole_number_ticks(qtbot):
    plot = LivePlot("Training progress", "value", "round")
    qtbot.addWidget(plot)
    axis = plot.getAxis("bottom")
    assert isinstance(axis, CountAxis)
    for low, high, pixels in ((0.5, 4.5, 400), (0.5, 8.5, 250), (0.5, 160.5, 500), (0.5, 2.5, 600)):
        values = [v for _spacing, level in axis.tickValues(low, high, pixels) for v in level]
        assert values and all(float(v).is_integer() for v in values), (low, high, values)


def test_file_dialogs_start_in_the_last_folder_of_their_purpose(tmp_path, monkeypatch, qtbot):
    settings = AppSettings(data_folder=tmp_path / "not-made-yet")
    memory = FolderMemory(settings)
    assert memory.start("images") == Path.home()  # the missing data folder is never offered
    settings.data_folder = tmp_path
    assert memory.start("images") == tmp_path

    asked = []
    chosen = tmp_path / "hospital" / "images"
    chosen.mkdir(parents=True)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory",
                        lambda parent, title, start: asked.append(start) or str(chosen))
    assert open_folder(None, memory, "images", "Choose") == chosen
    assert open_folder(None, memory, "images", "Choose") == chosen
    assert asked == [str(tmp_path), str(chosen.parent)]  # the second starts where the first choice was made
    assert memory.start("export") == tmp_path  # each purpose remembers its own
    saved, _warning = load_settings()
    assert saved.last_folders == {"images": str(chosen.parent)}  # kept across starts

    picker = PathPicker(folder=True, memory=memory, purpose="images")
    qtbot.addWidget(picker)
    picker.browse()
    assert asked[-1] == str(chosen.parent) and picker.path() == chosen
