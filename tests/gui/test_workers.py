"""JobRunner: results, errors, cancel, events and throttled progress arrive on the UI thread."""

from __future__ import annotations

import threading
import time

import pytest
from PySide6.QtCore import QThread

from core.errors import DataError
from gui.workers import PROGRESS_INTERVAL_S, JobRunner


@pytest.fixture
def runner(qapp):
    runner = JobRunner()
    yield runner
    runner.cancel_all()
    runner.wait_all(10000)


def test_result_and_progress_reach_the_ui_thread(qtbot, runner):
    ui_thread = QThread.currentThread()
    seen = []

    def job(n, *, progress, cancel):
        for i in range(n):
            progress((i + 1) / n, f"step {i + 1}")
        return threading.get_ident()

    results = []
    handle = runner.start(job, 5, on_progress=lambda f, m: seen.append((f, m, QThread.currentThread())),
                          on_done=results.append)
    qtbot.waitUntil(lambda: not handle.running, timeout=5000)
    assert results and results[0] != threading.get_ident()  # ran on a worker thread
    assert seen[-1][:2] == (1.0, "step 5")
    assert all(thread is ui_thread for *_rest, thread in seen)


def test_progress_is_throttled_but_the_last_value_arrives(qtbot, runner):
    seen = []

    def chatty(*, progress, cancel):
        for i in range(20000):
            progress(i / 20000 * 0.99, f"{i}")
        time.sleep(0.01)

    handle = runner.start(chatty, on_progress=lambda f, m: seen.append(m))
    qtbot.waitUntil(lambda: not handle.running, timeout=10000)
    assert seen[-1] == "19999"
    assert len(seen) < 20000 / 10  # most updates were coalesced
    assert PROGRESS_INTERVAL_S > 0


def test_errors_go_to_on_error_with_the_traceback(qtbot, runner):
    errors = []

    def broken():
        raise DataError("img.png: truncated; re-export it.")

    handle = runner.start(broken, on_error=errors.append, on_done=lambda r: pytest.fail("no result expected"))
    qtbot.waitUntil(lambda: not handle.running, timeout=5000)
    assert isinstance(errors[0], DataError)
    assert "broken" in errors[0].__dopamine_traceback__


def test_cancel_is_a_normal_end(qtbot, runner):
    started = threading.Event()
    outcomes = []

    def slow(*, cancel):
        started.set()
        while True:
            cancel.wait(0.01)

    handle = runner.start(slow, on_cancelled=lambda: outcomes.append("cancelled"),
                          on_error=lambda e: outcomes.append(e))
    qtbot.waitUntil(started.is_set, timeout=5000)  # jobs start once the event loop runs again
    assert handle in runner.active
    handle.cancel()
    qtbot.waitUntil(lambda: not handle.running, timeout=5000)
    assert outcomes == ["cancelled"]
    assert handle.was_cancelled and handle not in runner.active


def test_events_are_never_dropped_and_custom_event_kwarg(qtbot, runner):
    got = []

    def job(*, on_epoch):
        for i in range(500):
            on_epoch(i)
        return "ok"

    handle = runner.start(job, on_event=got.append, event_kwarg="on_epoch")
    qtbot.waitUntil(lambda: not handle.running, timeout=5000)
    assert got == list(range(500))


def test_plain_callables_get_no_job_keywords(qtbot, runner):
    results = []
    handle = runner.start(sorted, [3, 1, 2], on_done=results.append)
    qtbot.waitUntil(lambda: not handle.running, timeout=5000)
    assert results == [[1, 2, 3]]


def test_a_job_that_fails_at_once_still_reaches_what_is_connected_after_start(qtbot, runner):
    """The Data page's stuck "Checking images… [Cancel]": a job failing before the page connected its
    progress bar to ``finished`` left the bar on screen."""
    from gui.widgets.job_progress import JobProgress

    def broken():
        raise ValueError("no such folder")

    for _ in range(20):  # the race needed the worker to win; repeat to give it every chance
        progress = JobProgress()
        qtbot.addWidget(progress)
        handle = runner.start(broken, on_error=lambda e: None)
        ended: list[bool] = []
        handle.finished.connect(lambda seen=ended: seen.append(True))
        progress.bind(handle, "Checking images…")
        qtbot.waitUntil(lambda seen=ended: bool(seen), timeout=5000)
        assert not progress.isVisible() and progress.bar.value() == 0 and progress.message.text() == ""


def test_the_status_line_names_only_jobs_that_run_a_while(window, qtbot):
    """Sub-second jobs (a ledger read, a dashboard poll every 1.5 s) must not make the status line flicker."""
    import time as _time

    runner = window.context.runner
    quick = runner.start(lambda: None, name="quick")
    qtbot.waitUntil(lambda: not quick.running, timeout=5000)
    assert window.status_label.text() == ""
    slow = runner.start(lambda cancel: [(_time.sleep(0.05), cancel.check()) for _ in range(200)], name="slow")
    assert window.status_label.text() == ""  # not yet: it may end at once
    qtbot.waitUntil(lambda: "1 task(s) running" in window.status_label.text(), timeout=5000)
    slow.cancel()
    qtbot.waitUntil(lambda: window.status_label.text() == "", timeout=5000)
