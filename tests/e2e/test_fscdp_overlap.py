"""FSCDP computes a round's DP step beside the round-key exchange (issue 14), and still charges before it sends.

Two hospitals join a real coordinator over HTTPS (loopback, in threads). Each hospital's message for the
SHARE step is held back until that hospital's DP step of the round has begun: a client that computes only
in the MASK step (after SHARE, as before issue 14) never gets there and the federation stalls, so this test
fails on it. Then, per hospital and round: the step ran on the hospital's compute thread, not the thread
that talks to the coordinator; the ledger was charged after the step finished and before the masked sum
was sent; and every round was charged exactly once.
"""

import threading
import time
from collections import defaultdict

from core.federation import local_work
from core.federation.layout import InitConfig
from core.federation.protocol import Step
from core.federation.session import CoordinatorSession
from core.federation.simulate import free_port
from core.home import HospitalHome
from core.privacy.ledger import PrivacyLedger

ROUNDS = 3
HOLD_S = 20.0  # far longer than a round here: a SHARE still held after it means the step had not begun


def test_dp_step_overlaps_the_key_exchange_and_is_charged_before_sending(tmp_path, threaded_federation,
                                                                         monkeypatch):
    from core.data.synthetic import write_demo_data
    from core.federation.hospital_budget import HospitalBudget

    data = tmp_path / "data"
    write_demo_data(data, hospitals=2, per_hospital=12, test_images=4, size=40, seed=3)
    events: list[tuple[str, str, int, str]] = []  # (hospital thread, what, round, thread it happened on)
    lock = threading.Lock()
    began: dict[tuple[str, int], threading.Event] = defaultdict(threading.Event)
    held: list[tuple[str, int, float]] = []
    rounds_of: dict[str, int] = defaultdict(int)

    def note(hospital: str, what: str, round: int) -> None:
        with lock:
            events.append((hospital, what, round, threading.current_thread().name))

    real_step = local_work.fscdp_step

    def step(*args, **kwargs):
        hospital = threading.current_thread().name.split("/")[0]
        with lock:
            rounds_of[hospital] += 1
            round = rounds_of[hospital]
        note(hospital, "step begins", round)
        began[(hospital, round)].set()
        result = real_step(*args, **kwargs)
        note(hospital, "step ends", round)
        return result

    real_send = CoordinatorSession.send_step

    def send_step(self, round, attempt, step_name, body, what, ledger_key=""):
        hospital = threading.current_thread().name
        if step_name == Step.SHARE:
            waited = time.monotonic()
            if not began[(hospital, round)].wait(HOLD_S):
                held.append((hospital, round, time.monotonic() - waited))
        if step_name == Step.MASK:
            note(hospital, "mask sent", round)
        return real_send(self, round, attempt, step_name, body, what, ledger_key)

    real_charge = HospitalBudget.charge

    def charge(self, round, attempt):
        note(threading.current_thread().name, "charged", round)
        return real_charge(self, round, attempt)

    monkeypatch.setattr(local_work, "fscdp_step", step)
    monkeypatch.setattr(CoordinatorSession, "send_step", send_step)
    monkeypatch.setattr(HospitalBudget, "charge", charge)

    results = threaded_federation(InitConfig(
        folder=tmp_path / "fed", name="overlap", mode="fscdp", rounds=ROUNDS, hospitals=2, hosts=["127.0.0.1"],
        port=free_port(), image_size=32, sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3,
        lr=0.3, key_phase_timeout_s=60.0, compute_phase_timeout_s=60.0, seed=0), data)

    assert not held, f"SHARE sent before the round's DP step began (no overlap): {held}"
    assert all(r.reason == "completed" for r in results.values()), results
    for hospital in ("h000", "h001"):
        for round in range(1, ROUNDS + 1):
            mine = [(what, thread) for h, what, r, thread in events if h == hospital and r == round]
            order = [what for what, _ in mine]
            assert order == ["step begins", "step ends", "charged", "mask sent"], (hospital, round, mine)
            assert dict(mine)["step begins"] == f"{hospital}/compute_0", mine  # the compute thread
            assert dict(mine)["charged"] == hospital  # the thread that talks to the coordinator
    for number in range(2):
        with PrivacyLedger(HospitalHome.at(tmp_path / f"home{number}").ledger) as ledger:
            assert len(ledger.entries()) == ROUNDS  # one charge per released round, none for anything else
