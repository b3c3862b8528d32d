"""The UI never blocks on training: the event loop keeps running while a training job runs.

How long the loop may pause is a speed goal, measured by benchmarks/gui_latency.py (JSON), not here:
a loaded machine stretches every gap, and a timed assertion would fail for reasons unrelated to the app.
"""

from __future__ import annotations

import time

from PySide6.QtCore import QTimer

TICK_MS = 10


def test_the_event_loop_keeps_running_throughout_training(window, qtbot, make_image_folder, tmp_path):
    from gui.app import preload_engine

    preload_engine()  # as the app does on a worker 1.5 s after start-up
    data = make_image_folder(tmp_path / "images", per_class=24, size=64)
    page = window.show_page("train")
    page.data_picker.set_path(data)
    page.mode.setCurrentIndex(page.mode.findData("cdp"))
    page.model.setCurrentIndex(page.model.findData("small_cnn"))
    page.image_size.setCurrentIndex(page.image_size.findData(64))
    page.epochs.setValue(4)
    page.batch_size.setValue(8)
    qtbot.waitExposed(window)

    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(TICK_MS)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    started = time.perf_counter()
    page.start()
    qtbot.waitUntil(lambda: not page.job.running, timeout=180000)
    ended = time.perf_counter()
    timer.stop()

    assert page.job.error is None and page.result is not None
    assert len(page.loss_plot.series("training")[0]) == 4  # the UI really followed the training
    # Timer events were handled in every quarter of the job: the GUI thread was never the one training.
    quarter = (ended - started) / 4
    for k in range(4):
        assert any(started + k * quarter < t < started + (k + 1) * quarter for t in ticks), \
            f"no timer tick in quarter {k + 1} of the job"
