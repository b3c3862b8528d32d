"""One process of many simulated hospitals for the scale run (tests/reliability/scale_kit.py).

    python scale_pool.py SPEC.json

SPEC: {"hospitals": [{"number", "invitation", "data", "home", "leave_at": {"round", "phase"} | null}, ...],
       "die_at": {"round", "phase"} | null}.
Each hospital is one thread running the real hospital client (core.federation.client.run: its own home,
ledger, identity key, audit log, signed and pinned HTTPS to the coordinator, secure aggregation, a real
DP-SGD step of small_cnn on its few images), exactly what ``dopamine join`` runs, without a Python
process and a torch import of its own each (about 235 MB and 1.4 s CPU per process).

Every event goes to stdout as one JSON line with the hospital's number: {"hospital": N, "event": ...}.
With ``die_at`` the whole process SIGKILLs itself as soon as one of its hospitals starts that phase of
that round (from the event, before the phase's message is computed or sent): a kill -9 at an exact point.
A hospital with ``leave_at`` leaves the federation in the middle of that round: when that phase starts
it stops (cancel) before sending the phase's message, then tells the coordinator it leaves
(``dopamine leave``, core.federation.client.leave). At the end each prints {"event": "ended", "reason"}
or {"event": "failed", "error"}; the process prints {"event": "pool_done", "base_rss_mb" (after its imports), "peak_rss_mb"} last.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

_print_lock = threading.Lock()


def say(number: int, data: dict) -> None:
    line = json.dumps({"hospital": number, **data})
    with _print_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def rss_mb(field: str = "VmHWM") -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def hospital(spec: dict, die_at: dict | None) -> None:
    from core.errors import Cancelled, DopamineError
    from core.federation import client
    from core.federation.invitation import read_invitation
    from core.home import HospitalHome
    from core.jobs import CancelToken

    number = int(spec["number"])
    leave_at = spec.get("leave_at")
    cancel = CancelToken()

    def on_event(event) -> None:
        data = event.to_dict()
        say(number, data)
        if die_at and data.get("event") == "phase" and data.get("round") == die_at["round"] \
                and data.get("phase") == die_at["phase"]:
            os.kill(os.getpid(), signal.SIGKILL)
        if leave_at and data.get("event") == "phase" and data.get("round") == leave_at["round"] \
                and data.get("phase") == leave_at["phase"]:
            cancel.cancel()  # the phase's message is never sent: the next request stops on the token

    config = client.JoinConfig(invitation=Path(spec["invitation"]), data=Path(spec["data"]), home=Path(spec["home"]),
                               max_epsilon=1e6, accept_roster="any", poll_wait_s=20.0, threads=1,
                               max_backoff_s=5.0)
    try:
        result = client.run(config, cancel=cancel, on_event=on_event)
        say(number, {"event": "ended", "reason": result.reason, "epsilon": result.epsilon})
    except Cancelled:
        invitation = read_invitation(Path(spec["invitation"]))
        try:
            client.leave(invitation, HospitalHome.at(Path(spec["home"])), "scale test: leaving in the middle of a round")
            say(number, {"event": "ended", "reason": "left mid-round"})
        except DopamineError as exc:
            say(number, {"event": "failed", "error": f"leaving: {exc}"})
    except DopamineError as exc:
        say(number, {"event": "failed", "error": str(exc)})
    except BaseException as exc:  # noqa: BLE001 -- reported to the test, which fails on it
        say(number, {"event": "failed", "error": f"{type(exc).__name__}: {exc}"})


def main(spec_path: str) -> int:
    import torch

    import core.federation.client  # noqa: F401 -- imported before the baseline is read
    import core.federation.local_work  # noqa: F401

    torch.set_num_threads(1)
    base = rss_mb("VmRSS")
    spec = json.loads(Path(spec_path).read_text())
    threads = [threading.Thread(target=hospital, args=(h, spec.get("die_at")), name=f"hospital-{h['number']}", daemon=True)
               for h in spec["hospitals"]]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    say(0, {"event": "pool_done", "base_rss_mb": base, "peak_rss_mb": rss_mb(), "hospitals": len(threads)})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
