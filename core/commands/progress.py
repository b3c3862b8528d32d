"""Terminal progress bars for long jobs (tqdm), as a core.jobs ProgressFn."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from core.jobs import ProgressFn


@contextmanager
def progress_bar(description: str, *, enabled: bool = True) -> Iterator[ProgressFn]:
    """Yield a ProgressFn drawing a bar on stderr; silent when disabled (e.g. with --json) or when
    stderr is not a terminal (logs and pipes get the one-line results only)."""
    if not enabled or not sys.stderr.isatty():
        yield lambda fraction, message: None
        return
    bar = tqdm(total=1000, desc=description, file=sys.stderr, leave=False,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")

    def update(fraction: float, message: str) -> None:
        bar.n = int(max(0.0, min(1.0, fraction)) * 1000)
        bar.set_postfix_str(message[:60], refresh=False)
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()
