"""A coordinator that lies, played against real hospital clients over real HTTPS.

The coordinator runs in this process (so a test can make it lie) and serves over TLS; each hospital
is the real client (core.federation.client.run) with its own hospital home. What is checked is what
an auditor cares about: the lie is refused with a clear message, nothing noised leaves, and the
ledger charges each release exactly once.
"""

import dataclasses

import pytest

from core.federation.round_machine import OpenAttempt


@pytest.mark.parametrize("lie", ["encoding bound", "threshold", "colluders", "vector length"])
def test_forged_round_parameters_are_refused_before_anything_noised_leaves(tmp_path, data, https_server,
                                                                         federation_in_process, lie):
    federation = federation_in_process(tmp_path, data, https_server)
    honest = federation.service._round_params

    def forged(round, attempt):
        from core.secagg import FixedPoint

        params = honest(round, attempt)
        if lie == "encoding bound":  # clips every hospital's vector before summing
            return dataclasses.replace(params, encoding=FixedPoint(scale=params.encoding.scale, bound=1e-6))
        if lie == "threshold":
            return dataclasses.replace(params, threshold=2, colluders=0)
        if lie == "colluders":
            return dataclasses.replace(params, colluders=0)
        return dataclasses.replace(params, vector_length=params.vector_length - 1)

    federation.service._round_params = forged
    federation.run()
    for number in (1, 2, 3):
        result = federation.results[number]
        assert isinstance(result, Exception) and "differ from what the plan and the signed roster give" in str(result)
        assert federation.ledger_keys(number) == []  # nothing was charged ...
        assert federation.uploads(number, "mask") == []  # ... and nothing noised was sent


def test_a_hospital_the_coordinator_enrolled_itself_is_caught_by_the_roster(tmp_path, data, https_server,
                                                                            federation_in_process):
    """The coordinator holds every invitation token: it enrolls h03 with its own key and joins only h01, h02.

    The real third hospital's key fingerprint is read out over the phone; the roster code the real
    hospitals agree on is computed with it, so the coordinator's roster does not match and nobody signs it.
    """
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.federation.roster import FederationRoster, RosterEntry
    from core.signing import public_key_bytes

    federation = federation_in_process(tmp_path, data, https_server)
    fake, real_third = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    third = federation.invitations[2]
    federation.service.enroll(token=third.token, hospital_id=third.hospital_id, public_key=public_key_bytes(fake),
                              num_images=12)
    keys = {1: federation.home(1).identity(), 2: federation.home(2).identity(), 3: real_third}
    agreed = FederationRoster(third.federation_id, third.plan_hash, tuple(
        RosterEntry(inv.hospital_id, inv.hospital_name, public_key_bytes(keys[n]), 12)
        for n, inv in enumerate(federation.invitations, start=1)))
    federation.run(numbers=(1, 2), accept_roster=agreed.code)
    for number in (1, 2):
        result = federation.results[number]
        assert isinstance(result, Exception) and f"not the {agreed.code!r} this hospital confirmed" in str(result)
        assert federation.ledger_keys(number) == []
    assert federation.service.status == "confirming"  # no round ever opened

    # Without a code, the client stops and shows the roster: the third fingerprint is the coordinator's key.
    federation2 = federation_in_process(tmp_path / "again", data, https_server)
    inv3 = federation2.invitations[2]
    federation2.service.enroll(token=inv3.token, hospital_id="h03", public_key=public_key_bytes(fake), num_images=12)
    federation2.run(numbers=(1, 2), accept_roster=None)
    from core.signing import fingerprint

    for number in (1, 2):
        assert federation2.results[number].reason == "roster"
        review = next(e for e in federation2.events[number] if e.kind == "roster")
        shown = {h["hospital_id"]: h["fingerprint"] for h in review.hospitals}
        assert shown["h03"] == fingerprint(public_key_bytes(fake)) != fingerprint(public_key_bytes(real_third))


def test_a_reopened_round_is_refused_and_each_release_is_charged_once(tmp_path, data, https_server,
                                                                     federation_in_process):
    """After round 1's sum is released, the coordinator (as if restored from an earlier backup) reopens
    round 1 attempt 1. Every hospital refuses to compute it again; attempt 2 is a new, charged release."""
    federation = federation_in_process(tmp_path, data, https_server, rounds=2)
    service = federation.service
    finish = service._finish_round
    reopened = []

    def finish_round(aggregate):
        if not reopened and service.state.round == 1:
            reopened.append(True)
            with service.store.transaction() as db:  # what a backup from before round 1 holds
                service.store.delete_attempt_data(db, 1, 1)
            service._open_attempt(OpenAttempt(round=1, attempt=1, first=True))
            return
        finish(aggregate)

    service._finish_round = finish_round
    federation.run()
    assert reopened
    for number in (1, 2, 3):
        result = federation.results[number]
        assert not isinstance(result, Exception), result
        assert result.reason == "completed"
        keys = federation.ledger_keys(number)
        assert len(keys) == len(set(keys))  # never two charges for one release
        assert sorted(k.split(":round:")[1] for k in keys) == ["1:attempt:1", "1:attempt:2", "2:attempt:1"]
        masks = [(e.round, e.ledger_key) for e in federation.uploads(number, "mask")]
        assert len(masks) == len(set(masks)) == 3  # one masked upload per release, none recomputed
        assert any(e.kind == "error" and "reopened round 1 attempt 1" in e.message for e in federation.events[number])


def test_a_coordinator_cannot_drain_budgets_with_attempts_beyond_the_plan(tmp_path, data, https_server,
                                                                        federation_in_process):
    federation = federation_in_process(tmp_path, data, https_server, max_attempts=2)
    service = federation.service
    open_attempt = service._open_attempt

    def beyond(action):
        open_attempt(OpenAttempt(round=action.round, attempt=service.plan.max_attempts + 1, first=action.first))

    service._open_attempt = beyond
    federation.run()
    for number in (1, 2, 3):
        result = federation.results[number]
        assert isinstance(result, Exception) and "the plan allows 2" in str(result)
        assert federation.ledger_keys(number) == []
