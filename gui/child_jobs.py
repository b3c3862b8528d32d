"""Long, CPU-heavy core jobs (training, taking part in a federation) run in a child process.

Why: those jobs are Python-heavy (Opacus hooks, the privacy accountant, secure aggregation). In the
window's process they would compete with the UI thread for the interpreter lock, and on a busy
computer the window would stall for hundreds of milliseconds. In a child process they cannot.

The protocol is JSON lines, never pickle. The parent (a JobRunner worker thread, see ``run_child``)
writes one request line ``{"job": name, "args": {...}}`` to the child's stdin, and later
``{"cancel": true}`` to cancel (closing stdin cancels too, so a child never outlives its window).
The child answers on stdout with ``progress``, ``event`` and one final ``result``, ``cancelled`` or
``error`` line. This module imports no Qt: the child only loads core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from core import errors
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress

FROZEN_FLAG = "--dopamine-child-job"


# ---- the jobs: how each one's arguments, events and result cross the process boundary --------------

def _train_child(args: dict, progress: ProgressFn, cancel: CancelToken, emit: Callable[[dict], None]) -> dict:
    from core.config import from_dict
    from core.training.config import TrainConfig
    from core.training.trainer import run

    config = from_dict(TrainConfig, args["config"])  # its home: the app's (its ledger's delta, cache and key)
    result = run(config, progress=progress, cancel=cancel, on_epoch=lambda stats: emit(asdict(stats)))
    return result.to_dict()


def _train_event(data: dict) -> Any:
    from core.training.trainer import EpochStats

    return EpochStats(**data)


def _train_result(data: dict) -> Any:
    from core.training.trainer import EpochStats, TrainResult

    return TrainResult(**{**data, "history": [EpochStats(**h) for h in data.get("history", [])]})


def _join_child(args: dict, progress: ProgressFn, cancel: CancelToken, emit: Callable[[dict], None]) -> dict:
    from core.federation.client import JoinConfig, run

    paths = {"invitation", "data", "home", "labels_csv"}
    config = JoinConfig(**{k: Path(v) if k in paths and v is not None else v for k, v in args["config"].items()})
    result = run(config, progress=progress, cancel=cancel, on_event=lambda event: emit(event.to_dict()))
    return result.to_dict()


def _join_event(data: dict) -> Any:
    from core.federation.events import event_from_dict

    return event_from_dict(data)


def _join_result(data: dict) -> Any:
    from core.federation.client import JoinResult

    return JoinResult(**data)


# name -> (run in the child, decode an event in the parent, decode the result in the parent)
def _audit_child(args: dict, progress: ProgressFn, cancel: CancelToken, emit: Callable[[dict], None]) -> dict:
    from core.privacy_audit.audit import AuditConfig, run

    return run(AuditConfig(**args["settings"]), progress=progress, cancel=cancel).to_dict()


def _audit_result(data: dict) -> Any:
    from core.privacy_audit.audit import AuditResult

    return AuditResult.from_dict(data)


def _compare_child(args: dict, progress: ProgressFn, cancel: CancelToken, emit: Callable[[dict], None]) -> dict:
    from core.compare.config import CompareConfig
    from core.compare.run import run

    result = run(CompareConfig(**args["config"]), progress=progress, cancel=cancel)
    return {"results": result.results, "paths": {name: str(path) for name, path in result.paths.items()}}


JOBS: dict[str, tuple[Callable, Callable[[dict], Any], Callable[[dict], Any]]] = {
    "train": (_train_child, _train_event, _train_result),
    "join": (_join_child, _join_event, _join_result),
    "audit": (_audit_child, lambda data: data, _audit_result),
    "compare": (_compare_child, lambda data: data, lambda data: data),
}


# ---- parent side -------------------------------------------------------------------------------------

def child_command() -> list[str]:
    if getattr(sys, "frozen", False):  # a PyInstaller bundle: the app's own executable runs the job
        return [sys.executable, FROZEN_FLAG]
    return [sys.executable, "-m", "gui.child_jobs"]


def _child_log() -> Path:
    from core.paths import log_dir

    path = log_dir() / "background-jobs.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _raise_error(line: dict) -> None:
    error = errors.DopamineError.from_wire(line)  # same class, message and fields as in the child
    if error is not None:
        raise error
    name, message = str(line.get("error_type", "")), str(line.get("message", ""))
    exc = RuntimeError(f"{name}: {message}")
    exc.__dopamine_traceback__ = str(line.get("traceback", ""))  # type: ignore[attr-defined]
    raise exc


def run_child(job: str, args: dict, *, progress: ProgressFn = no_progress,
              cancel: CancelToken = NEVER_CANCELLED, on_event: Callable[[Any], None] | None = None) -> Any:
    """Run ``job`` in a child process and relay its progress and events; returns the decoded result."""
    _run, decode_event, decode_result = JOBS[job]
    cancel.check()
    with open(_child_log(), "ab") as log:
        process = subprocess.Popen(child_command(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write((json.dumps({"job": job, "args": args}) + "\n").encode())
    process.stdin.flush()

    def forward_cancel() -> None:
        while process.poll() is None:
            if cancel.cancelled:
                try:
                    process.stdin.write(b'{"cancel": true}\n')
                    process.stdin.flush()
                except OSError:
                    pass
                return
            time.sleep(0.05)

    threading.Thread(target=forward_cancel, name=f"cancel-{job}", daemon=True).start()
    final: dict | None = None
    try:
        for raw in process.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            kind = line.get("type")
            if kind == "progress":
                progress(float(line["fraction"]), str(line["message"]))
            elif kind == "event" and on_event is not None:
                on_event(decode_event(line["data"]))
            elif kind in ("result", "cancelled", "error"):
                final = line
    finally:
        try:
            process.stdin.close()
        except OSError:
            pass
        code = process.wait()
    if final is None:
        raise RuntimeError(f"The background process stopped unexpectedly (exit code {code}); "
                           f"details are in {_child_log()}.")
    if final["type"] == "cancelled":
        raise errors.Cancelled()
    if final["type"] == "error":
        _raise_error(final)
    return decode_result(final["data"])


# ---- child side --------------------------------------------------------------------------------------

CHILD_NICENESS = 5


def main() -> int:
    if hasattr(os, "nice"):
        # Background work yields the CPU to the window (and the rest of the desktop) when both want it.
        os.nice(CHILD_NICENESS)
    # The protocol owns the real stdout; anything a library prints goes to stderr (the log) instead.
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    lock = threading.Lock()

    def send(line: dict) -> None:
        with lock:
            protocol.write(json.dumps(line) + "\n")
            protocol.flush()

    request = json.loads(sys.stdin.readline() or "{}")
    cancel = CancelToken()

    def watch_stdin() -> None:
        for raw in sys.stdin:
            if '"cancel"' in raw:
                break
        cancel.cancel()  # a cancel line, or the parent went away

    threading.Thread(target=watch_stdin, daemon=True).start()
    run = JOBS[request["job"]][0]
    try:
        result = run(request["args"], lambda f, m: send({"type": "progress", "fraction": f, "message": m}),
                     cancel, lambda data: send({"type": "event", "data": data}))
    except errors.Cancelled:
        send({"type": "cancelled"})
    except errors.DopamineError as exc:
        send({"type": "error", **exc.to_wire(), "traceback": traceback.format_exc()})
        return 1
    except BaseException as exc:  # noqa: BLE001 -- every failure goes back to the window as a line
        send({"type": "error", "error_type": type(exc).__name__, "message": str(exc),
              "traceback": traceback.format_exc()})
        return 1
    else:
        send({"type": "result", "data": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
