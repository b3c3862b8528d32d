"""Background jobs for the UI (DESIGN §6): nothing slow ever runs on the UI thread.

``JobRunner.start(fn, *args, on_progress=..., on_done=..., on_error=..., on_event=..., **kwargs)``
runs ``fn`` on a QThreadPool. When ``fn`` accepts them, it is given ``progress=``, ``cancel=`` and
(when ``on_event`` is set) ``on_event=`` (or ``event_kwarg=``, e.g. the trainer's ``on_epoch``)
keyword arguments, so core ``run(config, *, progress,
cancel)`` jobs and plain callables both fit. Results come back through queued signals on the UI
thread. Progress is throttled (the newest value wins) because a training loop can report far faster
than a window can repaint; events are never dropped. ``core.errors.Cancelled`` is a normal end.
A job starts when control returns to the event loop, so every signal connected right after ``start``
(a progress bar's, a page's ``finished``) sees the job's end, however fast it fails.
"""

from __future__ import annotations

import inspect
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QRunnable, QThreadPool, QTimer, Signal

from core.errors import Cancelled
from core.jobs import CancelToken

PROGRESS_INTERVAL_S = 0.1


class JobHandle(QObject):
    """One running job. Signals arrive on the UI thread; ``cancel()`` is safe from anywhere."""

    progress = Signal(float, str)
    event = Signal(object)
    done = Signal(object)
    failed = Signal(object)
    cancelled = Signal()
    finished = Signal()

    def __init__(self, name: str, parent: QObject | None = None, *, precious: bool = False) -> None:
        super().__init__(parent)
        self.name = name
        # Precious jobs (training, a federation) are worth a question before the app quits.
        self.precious = precious
        self.started = time.monotonic()
        self.token = CancelToken()
        self.running = True
        self.result: Any = None
        self.error: BaseException | None = None
        self.was_cancelled = False
        self.finished.connect(self._mark_finished)

    def cancel(self) -> None:
        self.token.cancel()

    def _mark_finished(self) -> None:
        self.running = False


class _Throttle:
    """Forwards progress at most every PROGRESS_INTERVAL_S; the newest value is flushed at the end."""

    def __init__(self, emit: Callable[[float, str], None]) -> None:
        self._emit = emit
        self._lock = threading.Lock()
        self._last = 0.0
        self._pending: tuple[float, str] | None = None

    def __call__(self, fraction: float, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < PROGRESS_INTERVAL_S and fraction < 1.0:
                self._pending = (float(fraction), str(message))
                return
            self._last = now
            self._pending = None
        self._emit(float(fraction), str(message))

    def flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            self._emit(*pending)


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


class _Job(QRunnable):
    def __init__(self, handle: JobHandle, fn: Callable[..., Any], args: tuple, kwargs: dict,
                 event_kwarg: str | None) -> None:
        super().__init__()
        self.setAutoDelete(True)
        self._handle = handle
        self._fn = fn
        self._args = args
        self._kwargs = kwargs
        self._event_kwarg = event_kwarg

    def run(self) -> None:
        handle = self._handle
        throttle = _Throttle(lambda f, m: _emit(handle.progress, f, m))
        kwargs = dict(self._kwargs)
        if _accepts(self._fn, "progress"):
            kwargs.setdefault("progress", throttle)
        if _accepts(self._fn, "cancel"):
            kwargs.setdefault("cancel", handle.token)
        if self._event_kwarg and _accepts(self._fn, self._event_kwarg):
            kwargs.setdefault(self._event_kwarg, lambda event: _emit(handle.event, event))
        try:
            result = self._fn(*self._args, **kwargs)
        except Cancelled:
            throttle.flush()
            handle.was_cancelled = True
            _emit(handle.cancelled)
        except BaseException as exc:  # noqa: BLE001 -- every failure must reach the UI as a dialog
            throttle.flush()
            exc.__dopamine_traceback__ = traceback.format_exc()  # type: ignore[attr-defined]
            handle.error = exc
            _emit(handle.failed, exc)
        else:
            throttle.flush()
            handle.result = result
            _emit(handle.done, result)
        _emit(handle.finished)


def _emit(signal: Any, *args: Any) -> None:
    """Emit from the worker; when the app is shutting down and the handle is gone, drop it quietly."""
    try:
        signal.emit(*args)
    except RuntimeError:
        pass


class JobRunner(QObject):
    """Starts jobs on a thread pool and keeps their handles alive until they finish."""

    job_started = Signal(object)
    job_finished = Signal(object)

    def __init__(self, parent: QObject | None = None, *, max_threads: int = 4) -> None:
        super().__init__(parent)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(max_threads)
        self._handles: set[JobHandle] = set()

    def start(self, fn: Callable[..., Any], *args: Any,
              on_progress: Callable[[float, str], None] | None = None,
              on_done: Callable[[Any], None] | None = None,
              on_error: Callable[[BaseException], None] | None = None,
              on_event: Callable[[Any], None] | None = None,
              on_cancelled: Callable[[], None] | None = None,
              name: str = "", event_kwarg: str = "on_event", precious: bool = False,
              **kwargs: Any) -> JobHandle:
        # No Qt parent: pages may keep a handle after the job ended, so Python owns its lifetime.
        handle = JobHandle(name or getattr(fn, "__qualname__", "job"), precious=precious)
        if on_progress is not None:
            handle.progress.connect(on_progress)
        if on_event is not None:
            handle.event.connect(on_event)
        if on_done is not None:
            handle.done.connect(on_done)
        if on_error is not None:
            handle.failed.connect(on_error)
        if on_cancelled is not None:
            handle.cancelled.connect(on_cancelled)
        handle.finished.connect(lambda: self._release(handle))
        self._handles.add(handle)
        self.job_started.emit(handle)
        job = _Job(handle, fn, args, kwargs, event_kwarg=event_kwarg if on_event is not None else None)
        # Started once the caller has returned to the event loop: a job that fails at once would otherwise
        # emit finished before the caller connected its progress bar, which then never hid.
        QTimer.singleShot(0, self, lambda: self._pool.start(job))
        return handle

    def _release(self, handle: JobHandle) -> None:
        self._handles.discard(handle)
        self.job_finished.emit(handle)

    @property
    def active(self) -> list[JobHandle]:
        return [h for h in self._handles if h.running]

    def cancel_all(self) -> None:
        for handle in list(self._handles):
            handle.cancel()

    def wait_all(self, timeout_ms: int = -1) -> bool:
        """Block until every job ended (used on quit, after cancel_all)."""
        return self._pool.waitForDone(timeout_ms)
