"""FSCDP under faults, in one federation: hospital 3 is SIGKILLed right after uploading in round 2 and
restarted; the coordinator is SIGKILLed in the middle of round 3 and restarted on the same port.

A round that goes on without a hospital needs m < K: this plan has t = 0 (m = 2 of 3)."""

import math
import threading
import time

import pytest

from core.privacy.accountant import compute_epsilon

ROUNDS = 4


@pytest.fixture(scope="module")
def faulty(federation_factory):
    run = federation_factory("fscdp_faults", mode="fscdp", rounds=ROUNDS, sample_rate=0.3, noise_multiplier=1.0,
                             max_grad_norm=1.0, lr=0.5, delta=1e-3, colluders=0)
    done = {"hospital": False, "coordinator": False}
    victim = run.hospitals[2]
    victim.restart_pending = False

    def restart_hospital():
        time.sleep(1.0)
        victim.start()
        victim.restart_pending = False

    def restart_coordinator():
        time.sleep(1.0)
        run.start_coordinator()
        done["coordinator_back"] = True

    def on_event(hospital, event):
        if event["event"] != "uploaded":
            return
        if hospital is victim and event["round"] == 2 and not done["hospital"]:
            done["hospital"] = True
            victim.restart_pending = True
            hospital.kill()
            threading.Thread(target=restart_hospital, daemon=True).start()
        elif hospital.number == 1 and event["round"] == 3 and not done["coordinator"]:
            done["coordinator"] = True
            run.coordinator.kill()
            threading.Thread(target=restart_coordinator, daemon=True).start()

    run.start(on_event=on_event)
    run.wait(timeout_s=200)
    assert done == {"hospital": True, "coordinator": True, "coordinator_back": True}, run.logs()
    return run


def test_the_federation_finishes_despite_both_kills(faulty):
    status = faulty.status()
    assert status["status"] == "finished", faulty.logs()
    assert status["rounds_finished"] == ROUNDS
    for hospital in faulty.hospitals:
        assert hospital.process.returncode == 0, faulty.logs()


def test_the_coordinator_resumed_round_3_instead_of_restarting_it(faulty):
    log = faulty.paths.log.read_text()
    assert "resumed round 3 attempt 1" in log
    round3 = [r for r in faulty.status()["last_rounds"] if r["round"] == 3][0]
    assert round3["attempts"] == 1  # the masked inputs received before the kill were kept


def test_the_round_completes_with_the_killed_hospitals_upload(faulty):
    rounds = {r["round"]: r for r in faulty.status()["last_rounds"]}
    # It uploaded its masked input before dying: its input is in the sum (its self mask was
    # rebuilt from the others' shares) and the round did not wait for it.
    assert "h03" in rounds[2]["included"]
    assert len(rounds[2]["included"]) == 3


def test_the_restarted_hospitals_ledger_is_right(faulty):
    victim = faulty.hospitals[2]
    entries, spent = faulty.ledger_entries(victim)
    keys = [e.key for e in entries]
    assert len(keys) == len(set(keys))  # never charged twice
    assert sum(":round:2:" in k for k in keys) == 1
    included = [r["round"] for r in faulty.status()["last_rounds"] if "h03" in r["included"]]
    assert 2 in included
    state = faulty.hospital_state(victim)
    assert sorted(state["rounds_participated"]) == included  # it remembers the round it completed before dying
    assert len(entries) == len(included)


def test_each_hospitals_epsilon_equals_the_accountants_for_its_rounds(faulty):
    plan = faulty.plan
    records = faulty.status()["last_rounds"]
    for hospital in faulty.hospitals:
        hospital_id = f"h{hospital.number:02d}"
        rounds = [r["round"] for r in records if hospital_id in r["included"]]
        entries, spent = faulty.ledger_entries(hospital)
        assert len(entries) == len(rounds)
        expected = compute_epsilon(sample_rate=plan.sample_rate, noise_multiplier=plan.noise_multiplier,
                                   steps=len(rounds), delta=plan.delta, accountant=plan.accountant)
        assert math.isclose(spent, expected, rel_tol=1e-9)


def test_audit_logs_stay_intact_across_the_kills(faulty):
    for hospital in faulty.hospitals:
        result = faulty.audit(hospital)
        assert result.ok and result.signatures_checked, result.to_text()
