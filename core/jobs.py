"""Progress and cancellation shared by every long job.

Every long job is a plain function ``run(config, *, progress, cancel)``. ``progress(fraction,
message)`` is called from the job's thread; ``cancel`` is checked between units of work and raises
:class:`core.errors.Cancelled`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from core.errors import Cancelled

ProgressFn = Callable[[float, str], None]


def no_progress(fraction: float, message: str) -> None:
    """The default progress callback: does nothing."""


class CancelToken:
    """A thread-safe cancel flag. ``check()`` raises Cancelled once ``cancel()`` was called."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise Cancelled()

    def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``, returning early (with Cancelled) when cancelled."""
        if self._event.wait(seconds):
            raise Cancelled()


NEVER_CANCELLED = CancelToken()
