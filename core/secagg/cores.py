"""Work split over this process's cores: one lazily started thread pool, forgotten in forked children.

Mask expansion (AES-CTR in `cryptography`), numpy's ring arithmetic and hashlib's SHA-256 all release
the GIL on large buffers, so threads use every core for them. A persistent pool costs about 10 us a
call where a fresh one costs a few hundred; a child made by fork() gets a new pool of its own.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def available() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def _helpers() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max(1, available() - 1), thread_name_prefix="secagg-core")
        return _pool


def _forget_pool() -> None:
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()  # the parent's threads do not exist in a forked child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def split(work: Callable[[int, int], None], count: int, *, workers: int | None = None) -> None:
    """work(start, stop) over contiguous ranges that cover [0, count), one range per worker.

    The calling thread does the first range itself; an exception in any range is raised here after
    every range has ended.
    """
    parts = max(1, min(available() if workers is None else workers, count))
    bounds = [count * part // parts for part in range(parts + 1)]
    pending: list[Future[None]] = [
        _helpers().submit(work, bounds[part], bounds[part + 1]) for part in range(1, parts)
    ]
    try:
        work(bounds[0], bounds[1])
    finally:
        for future in pending:
            future.exception()  # wait for every range before the buffers they write go away
    for future in pending:
        future.result()
