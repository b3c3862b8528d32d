"""What every fuzz case of the reliability campaign checks, and how many cases each surface runs.

The rule for a hostile input (docs/architecture.md, the threat model): it is used, or it is refused with
a ``DopamineError`` whose message is one non-empty line. Anything else fails the case: another exception
type, a multi-line or empty message, a case that runs past its time bound (a hang), or unpickling or
starting a process while the input is parsed (an audit hook watches for both).

Two hypothesis profiles, chosen by ``DOPAMINE_FUZZ_PROFILE``: ``ci`` (a few hundred cases per surface,
the same cases every run: ``make test``) and ``reliability`` (thousands, new cases every run, failures
remembered in .hypothesis/: ``make reliability``). A surface whose cases cost more runs a fraction of
them (``SURFACE_WEIGHT``). Every input that ever failed is kept in ``corpus/<surface>/`` and replayed by
the tests; a failure found by a run is written there as ``found-<sha>`` (commit it with the fix).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings

from core.errors import DopamineError

HERE = Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
PROFILE_ENV = "DOPAMINE_FUZZ_PROFILE"
PROFILE = os.environ.get(PROFILE_ENV, "ci")

_COMMON = dict(
    deadline=None,  # a shared 2-core machine; hangs are bounded per case below instead
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much,
                           HealthCheck.large_base_example],
    print_blob=True,
)
settings.register_profile("ci", max_examples=300, derandomize=True, database=None, **_COMMON)
settings.register_profile("reliability", max_examples=4000, **_COMMON)
if PROFILE not in ("ci", "reliability"):
    raise SystemExit(f"{PROFILE_ENV} must be ci or reliability, not {PROFILE!r}")

# Relative cost of one case: a surface whose cases build models or coordinators runs fewer of them.
SURFACE_WEIGHT = {
    "images": 1.0, "dicom": 1.0, "csv": 1.0, "dpm": 0.75, "invitation": 1.0, "plan": 1.0,
    "http": 1.0, "secagg": 1.0, "views": 1.0, "api": 1.0,
}
CASE_BOUND_S = 15.0  # far above any case's real cost (milliseconds); a case past it is a hang


def fuzz_settings(surface: str, share: float = 1.0) -> settings:
    """The active profile, scaled for ``surface`` (and ``share``: one of several tests of a surface)."""
    base = settings.get_profile(PROFILE)
    examples = max(10, round(base.max_examples * SURFACE_WEIGHT[surface] * share))
    return settings(base, max_examples=examples)


# --- counting ------------------------------------------------------------------------------------

COUNTS: dict[str, Counter] = defaultdict(Counter)
_FAILED: dict[tuple[str, str], tuple[bytes, str]] = {}  # (surface, what failed where) -> (input, suffix)


def summary() -> dict[str, Any]:
    return {"profile": PROFILE, "surfaces": {name: dict(counts) for name, counts in sorted(COUNTS.items())}}


def save_found_failures() -> list[Path]:
    """Write the last failing input of each distinct failure into the corpus (the minimal one: hypothesis
    replays the shrunk example last)."""
    written: list[Path] = []
    if os.environ.get("DOPAMINE_FUZZ_NO_SAVE"):  # checking that a corpus input fails without its fix
        return written
    for (surface, _), (data, suffix) in sorted(_FAILED.items()):
        folder = CORPUS / surface
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"found-{hashlib.sha256(data).hexdigest()[:12]}{suffix}"
        path.write_bytes(data)
        written.append(path)
    return written


# --- the guard: nothing unpickled, no process started ----------------------------------------------

_FORBIDDEN_EVENTS = ("pickle.find_class", "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn",
                     "os.spawn", "os.fork", "os.forkpty", "pty.spawn")
_armed = threading.Event()
_seen: list[str] = []


class _Forbidden(BaseException):
    """Raised inside the forbidden call itself, so it never runs (BaseException: no ``except Exception``
    in the code under test can swallow it)."""


def _audit(event: str, args: tuple) -> None:
    if _armed.is_set() and event in _FORBIDDEN_EVENTS:
        _seen.append(f"{event}{args!r:.200}")
        raise _Forbidden(event)


sys.addaudithook(_audit)


@contextmanager
def _watched() -> Iterator[None]:
    _seen.clear()
    _armed.set()
    try:
        yield
    finally:
        _armed.clear()


@contextmanager
def watch_everything() -> Iterator[list[str]]:
    """For tests whose parsing happens in other threads (a served coordinator): every forbidden event in
    the process while the block runs is recorded (the list is checked by the caller)."""
    with _watched():
        yield _seen


# --- the time bound --------------------------------------------------------------------------------

class _Hung(BaseException):
    pass


@contextmanager
def _bounded(seconds: float) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum, frame):
        raise _Hung()

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# --- one case ----------------------------------------------------------------------------------------

def _remember(surface: str, what: str, data: bytes, suffix: str) -> None:
    _FAILED[(surface, what)] = (bytes(data), suffix)


def _where(exc: BaseException) -> str:
    """The exception's type and the line that raised it: one defect, however its input shrinks."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    last = frames[-1] if frames else None
    return f"{type(exc).__name__} at {last.filename}:{last.lineno}" if last else type(exc).__name__


def check_message(error: BaseException, surface: str) -> None:
    message = str(error)
    assert message.strip(), f"{surface}: {type(error).__name__} with an empty message"
    assert "\n" not in message and "\r" not in message, (
        f"{surface}: {type(error).__name__} message is not one line: {message!r:.600}")


def run_case(surface: str, parse: Callable[[], Any], *, data: bytes = b"", suffix: str = "",
             bound_s: float = CASE_BOUND_S) -> Any:
    """Run ``parse`` on one hostile input: its result, or the DopamineError it raised (checked).

    ``data``/``suffix`` are the raw input, kept for the corpus if the case fails.
    """
    COUNTS[surface]["cases"] += 1
    started = time.monotonic()
    try:
        with _bounded(bound_s), _watched():
            try:
                result = parse()
            except DopamineError as exc:
                result = exc
        if _seen:
            raise AssertionError(f"{surface}: parsing the input {', '.join(_seen)}")
        elapsed = time.monotonic() - started
        assert elapsed < bound_s, f"{surface}: one case took {elapsed:.1f} s (bound {bound_s} s)"
        if isinstance(result, DopamineError):
            check_message(result, surface)
            COUNTS[surface]["refused"] += 1
        else:
            COUNTS[surface]["accepted"] += 1
        return result
    except _Hung:
        _remember(surface, "hang", data, suffix)
        raise AssertionError(f"{surface}: a case ran past {bound_s} s (a hang)") from None
    except _Forbidden as exc:
        _remember(surface, f"forbidden {exc}", data, suffix)
        raise AssertionError(f"{surface}: parsing the input tried {exc} ({', '.join(_seen)})") from None
    except AssertionError as exc:
        _remember(surface, str(exc)[:60], data, suffix)
        raise
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust decoder's PanicException is a BaseException, not an Exception
        _remember(surface, _where(exc), data, suffix)
        raise AssertionError(f"{surface}: {type(exc).__name__} escaped instead of a DopamineError: "
                             f"{exc!s:.500}") from exc


# --- mutations ----------------------------------------------------------------------------------------

_INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\xff\xff\xff\x7f",
                b"\x00\x00\x00\x80", b"\xff\xff\xff\xff", b"\x00\x00\x01\x00", b"\x01\x00\x00\x00")


def mutate(data: bytes, draw, max_edits: int = 4) -> bytes:
    """``data`` after 0..max_edits edits a fuzzer makes: truncation, flipped, set, inserted, deleted or
    repeated bytes, and interesting integers written over a field (``draw`` is hypothesis' ``data.draw``)."""
    from hypothesis import strategies as st

    out = bytearray(data)
    for _ in range(draw(st.integers(0, max_edits), label="edits")):
        kind = draw(st.sampled_from(("truncate", "flip", "set", "insert", "delete", "repeat", "interesting")))
        at = draw(st.integers(0, max(0, len(out))), label="at")
        if kind == "truncate":
            del out[at:]
        elif kind == "flip" and at < len(out):
            out[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and at < len(out):
            out[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del out[at:at + draw(st.integers(1, 64))]
        elif kind == "repeat":
            piece = out[at:at + draw(st.integers(1, 256))]
            out[at:at] = piece * draw(st.integers(1, 4))
        elif kind == "interesting" and at < len(out):
            value = draw(st.sampled_from(_INTERESTING))
            out[at:at + len(value)] = value
    return bytes(out)


# --- the corpus -------------------------------------------------------------------------------------

def corpus(surface: str) -> list[Path]:
    """Every kept input of ``surface`` (README.md files describe the folders and are not inputs)."""
    folder = CORPUS / surface
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != "README.md")


def corpus_params(surface: str) -> list:
    import pytest

    found = corpus(surface)
    assert found, f"the corpus of {surface} is empty: tests/reliability/corpus/{surface}/"
    return [pytest.param(path, id=path.name) for path in found]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
