"""Every federated mode end to end: a coordinator and 3 hospital processes over loopback HTTPS.

In the FSCDP federation hospital 3's privacy cap allows exactly two of the three rounds: it takes
part in rounds 1 and 2, declines round 3 (and says so), and the other two finish the plan. That
needs a round to go on with two of three hospitals, so this plan protects against the coordinator
only (t = 0, m = 2); the default t = 1 would need all three (2m > K + t).
"""

import math

import pytest

from core.audit import read_audit_log
from core.home import HospitalHome
from core.privacy.accountant import compute_epsilon

FSCDP = dict(mode="fscdp", rounds=3, sample_rate=0.3, noise_multiplier=1.0, max_grad_norm=1.0, lr=0.5, delta=1e-3,
             colluders=0)
MODES = {
    # F with secure aggregation (its optional path); FPDP without (the plain-update path).
    "f+secagg": dict(mode="f", rounds=2, batch_size=8, local_epochs=1, lr=0.05, secagg=True),
    "fpdp": dict(mode="fpdp", rounds=2, batch_size=8, local_epochs=1, lr=0.1, noise_multiplier=1.1,
                 max_grad_norm=1.0, delta=1e-3),
    "fscdp": FSCDP,
}
CAPPED = 3  # FSCDP: this hospital's cap allows two rounds


def fscdp_epsilon(rounds: int) -> float:
    return compute_epsilon(sample_rate=FSCDP["sample_rate"], noise_multiplier=FSCDP["noise_multiplier"], steps=rounds,
                           delta=FSCDP["delta"])


@pytest.fixture(scope="module", params=sorted(MODES))
def finished(request, federation_factory):
    caps = {CAPPED: fscdp_epsilon(2) * 1.0001} if request.param == "fscdp" else 1000.0
    run = federation_factory(request.param.replace("+", "_"), max_epsilon=caps, **MODES[request.param])
    run.start()
    run.wait()
    return request.param, run


def rounds_of(run, hospital) -> list[int]:
    """The rounds each hospital is expected to take part in."""
    if run.plan.mode == "fscdp" and hospital.number == CAPPED:
        return [1, 2]
    return list(range(1, run.plan.rounds + 1))


def test_the_federation_finishes_and_every_hospital_takes_part_in_its_rounds(finished):
    name, run = finished
    status = run.status()
    assert status["status"] == "finished", run.logs()
    assert status["rounds_finished"] == run.plan.rounds
    for record in status["last_rounds"]:
        expected = [f"h{h.number:02d}" for h in run.hospitals if record["round"] in rounds_of(run, h)]
        assert record["included"] == expected
        assert record["images"] == len(expected) * run.per_hospital
    for hospital in run.hospitals:
        assert hospital.process.returncode == 0, run.logs()
        finished_events = [e for e in hospital.events if e["event"] == "finished"]
        assert len(finished_events) == 1
        assert finished_events[0]["rounds_participated"] == rounds_of(run, hospital)
        kinds = {e["event"] for e in hospital.events}
        assert {"plan", "enrolled", "round_started", "phase", "uploaded", "model_received"} <= kinds
        if run.plan.is_private:
            assert "budget_charged" in kinds
        capped = run.plan.mode == "fscdp" and hospital.number == CAPPED
        assert finished_events[0]["reason"] == ("declined" if capped else "completed")
        declined = [e for e in hospital.events if e["event"] == "declined"]
        assert [e["round"] for e in declined] == ([3] if capped else [])
        if capped:
            assert "above its cap" in declined[0]["reason"]
            assert [h["status"] for h in status["hospitals"] if h["hospital_id"] == "h03"] == ["declined"]


def test_the_global_model_is_signed_by_the_coordinator_and_its_card_is_right(finished):
    from core.federation.invitation import read_invitation
    from core.models.package import read_package

    name, run = finished
    coordinator_key = read_invitation(run.hospitals[0].invitation).coordinator_signing_key
    path = run.paths.model_package(run.plan.rounds)
    package = read_package(path, trusted_keys=[coordinator_key])
    assert package.signature_ok
    card = package.card
    assert card.mode == run.plan.mode
    assert card.rounds == run.plan.rounds
    assert card.hospitals == 3
    assert sorted(card.image_counts.values()) == [run.per_hospital] * 3
    assert card.architecture == "small_cnn"
    assert "evaluation" in card.metrics and 0.0 <= card.metrics["evaluation"]["accuracy"] <= 1.0
    if run.plan.is_private:
        assert card.delta == run.plan.delta
        assert card.epsilon == pytest.approx(expected_epsilon(run, run.plan.rounds), rel=1e-9)
    else:
        assert card.epsilon is None
    for hospital in run.hospitals:  # every hospital that finished holds that very model
        final = hospital.membership / "models" / "final.dpm"
        if finished_reason(hospital) == "completed":
            assert read_package(final, trusted_keys=[coordinator_key]).sha256 == package.sha256


def finished_reason(hospital) -> str:
    return [e for e in hospital.events if e["event"] == "finished"][0]["reason"]


def expected_epsilon(run, rounds: int) -> float:
    plan = run.plan
    if plan.mode == "fscdp":
        return fscdp_epsilon(rounds)
    _noise, rate, steps = plan.round_cost(run.per_hospital)
    return compute_epsilon(sample_rate=rate, noise_multiplier=plan.noise_multiplier, steps=steps * rounds,
                           delta=plan.delta, accountant=plan.accountant)


def test_each_hospitals_epsilon_equals_the_accountants_for_the_rounds_it_took_part_in(finished):
    name, run = finished
    for hospital in run.hospitals:
        if not run.plan.is_private:
            assert not HospitalHome.at(hospital.home).ledger.exists()  # mode F spends no budget
            continue
        entries, spent = run.ledger_entries(hospital)
        rounds = rounds_of(run, hospital)
        assert len(entries) == len(rounds)
        assert len({e.key for e in entries}) == len(entries)
        assert math.isclose(spent, expected_epsilon(run, len(rounds)), rel_tol=1e-9)
        assert spent <= (fscdp_epsilon(2) * 1.0001 if run.plan.mode == "fscdp" and hospital.number == CAPPED else 1000)


def test_audit_logs_record_every_upload_and_verify(finished):
    name, run = finished
    for hospital in run.hospitals:
        result = run.audit(hospital)
        assert result.ok and result.signatures_checked, result.to_text()
        state = run.hospital_state(hospital)
        sent = sum(e.bytes for e in read_audit_log(HospitalHome.at(hospital.home).audit_log) if e.kind == "sent")
        assert sent == state["bytes_sent"] > 0
        uploaded = sum(e["bytes"] for e in hospital.events if e["event"] == "uploaded")
        assert 0 < uploaded < result.total_bytes


def test_secret_files_are_private(finished):
    name, run = finished
    secrets = [run.paths.signing_key, run.paths.tls / "ca.key", run.paths.tls / "server.key", *run.init.invitations]
    secrets += [HospitalHome.at(h.home).identity_key for h in run.hospitals]
    for path in secrets:
        assert oct(path.stat().st_mode & 0o777) == "0o600", path
