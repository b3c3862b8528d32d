"""Which hospitals are there: each holds a long poll open while it runs, so a dropped connection says
at once that it is gone (its process died or it lost the network), and silence says so after a while."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger("dopamine.coordinator")

STALE_AFTER_S = 90.0  # a hospital silent this long (and not waiting in a poll) is not waited for


@dataclass
class _Seen:
    last_seen: float
    polls: int = 0
    gone: bool = False


class Presence:
    def __init__(self, clock=time.time) -> None:
        self._clock = clock
        self._started = clock()
        self._seen: dict[str, _Seen] = {}
        self._lock = threading.Lock()

    def touch(self, hospital_id: str) -> None:
        with self._lock:
            seen = self._seen.setdefault(hospital_id, _Seen(self._clock()))
            seen.last_seen = self._clock()
            seen.gone = False

    def poll_started(self, hospital_id: str) -> None:
        self.touch(hospital_id)
        with self._lock:
            self._seen[hospital_id].polls += 1

    def poll_ended(self, hospital_id: str, *, disconnected: bool) -> None:
        with self._lock:
            seen = self._seen.setdefault(hospital_id, _Seen(self._clock()))
            seen.polls = max(0, seen.polls - 1)
            if disconnected:
                # Its next request, if it comes back, makes it present again.
                seen.gone = True
                log.info("hospital %s disconnected while waiting", hospital_id)
            else:
                seen.last_seen = self._clock()

    def last_seen(self) -> dict[str, float]:
        """When each hospital was last heard from (its latest request, or now while it holds a poll open)."""
        now = self._clock()
        with self._lock:
            return {h: now if seen.polls > 0 and not seen.gone else seen.last_seen for h, seen in self._seen.items()}

    def gone(self, hospital_ids, now: float | None = None) -> frozenset[str]:
        now = self._clock() if now is None else now
        with self._lock:
            return frozenset(h for h in hospital_ids if self._is_gone(h, now))

    def _is_gone(self, hospital_id: str, now: float) -> bool:
        seen = self._seen.get(hospital_id)
        if seen is None:
            return now - self._started > STALE_AFTER_S
        if seen.gone:
            return True
        return seen.polls == 0 and now - seen.last_seen > STALE_AFTER_S
