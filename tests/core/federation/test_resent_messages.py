"""A hospital's retry of a message whose first try got in, though its answer was lost (the coordinator was
killed right after storing it, or the link was cut): the round has moved on since, and the retry must be
told "duplicate" (the hospital goes on), not refused as out of step (which ended the hospital's run:
tests/e2e/test_fscdp_faults.py caught it once in about ten runs)."""

from __future__ import annotations

import time

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import Refused
from core.federation.coordinator import Coordinator
from core.federation.invitation import read_invitation
from core.federation.layout import InitConfig, init_federation
from core.federation.weights import arrays_to_bytes
from core.secagg.crypto import ed25519_public_bytes


def _wait(condition, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "the coordinator did not get there"
        time.sleep(0.02)


@pytest.fixture
def coordinator(tmp_path):
    result = init_federation(InitConfig(folder=tmp_path / "fed", name="resend", mode="f", rounds=3, hospitals=2,
                                        hosts=["127.0.0.1"], port=1, image_size=32, batch_size=8, local_epochs=1,
                                        secagg=False))
    service = Coordinator(tmp_path / "fed")
    service.start()
    try:
        for path in sorted(result.invitations):
            invitation = read_invitation(path)
            service.enroll(token=invitation.token, hospital_id=invitation.hospital_id,
                           public_key=ed25519_public_bytes(Ed25519PrivateKey.generate()), num_images=10)
        _wait(lambda: service.state.round == 1 and service.state.phase == "update")
        yield service
    finally:
        service.stop()


def _update(service: Coordinator) -> bytes:
    layout = service.publisher.layout
    return arrays_to_bytes(layout.unflatten_arrays(np.zeros(layout.length)))


def test_a_retry_after_the_round_moved_on_is_a_duplicate(coordinator):
    body = _update(coordinator)
    coordinator.submit("h01", 1, 1, "update", body)
    with pytest.raises(Refused) as again:  # still in the step: the plain duplicate
        coordinator.submit("h01", 1, 1, "update", body)
    assert again.value.code == "duplicate"
    coordinator.submit("h02", 1, 1, "update", body)
    _wait(lambda: coordinator.state.model_round == 1 and coordinator.state.round == 2)
    with pytest.raises(Refused) as late:  # round 1 was released with h01's update in it
        coordinator.submit("h01", 1, 1, "update", body)
    assert late.value.status == 409 and late.value.code == "duplicate"


def test_a_message_never_sent_is_still_refused_as_out_of_step(coordinator):
    body = _update(coordinator)
    for hospital in ("h01", "h02"):
        coordinator.submit(hospital, 1, 1, "update", body)
    _wait(lambda: coordinator.state.round == 2)
    for round, attempt in ((1, 2), (3, 1)):  # an attempt that never ran; a round not open yet
        with pytest.raises(Refused) as refused:
            coordinator.submit("h01", round, attempt, "update", body)
        assert refused.value.status == 409 and refused.value.code != "duplicate"


def test_a_restart_after_a_released_round_opens_the_next_one(coordinator, tmp_path):
    # Killed between committing round 1 (its model published, its messages deleted) and opening round 2:
    # the stored state still names round 1 as open. Resuming it would find no messages and retry round 1,
    # which every hospital holding its model refuses (the kill matrix's "publishing the model" cell).
    body = _update(coordinator)
    for hospital in ("h01", "h02"):
        coordinator.submit(hospital, 1, 1, "update", body)
    _wait(lambda: coordinator.state.round == 2)
    coordinator.stop()
    again = Coordinator(tmp_path / "fed")
    with again.store.transaction() as db:  # the state as the kill left it
        again.store.set_meta(db, {"round": 1, "attempt": 1, "phase": "update"})
    again.store.close()
    restarted = Coordinator(tmp_path / "fed")
    try:
        assert (restarted.state.model_round, restarted.state.round, restarted.state.attempt) == (1, 2, 1)
        assert restarted.state.phase == "update"
    finally:
        restarted.store.close()


def test_a_restarted_hospital_removes_what_a_killed_write_left(tmp_path):
    # SIGKILL between atomic_write_bytes's temporary file and its rename leaves the temporary file behind
    # (the kill matrix found .state.json.<random>.tmp in a hospital's membership folder after the run).
    from core.federation.membership import MembershipFolder

    folder = MembershipFolder(tmp_path / "membership")
    folder.pending.mkdir(parents=True)
    leftovers = [folder.root / ".state.json.k3j2.tmp", folder.pending / ".r00001-a001.bin.x9.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    kept = folder.root / "notes.tmp"  # not one of ours
    kept.write_bytes(b"x")
    invitation = type("Invitation", (), {"ca_certificate": "pem", "federation_id": "f", "federation_name": "n",
                                         "coordinator_url": "https://x", "hospital_id": "h01",
                                         "hospital_name": "a", "plan_hash": "p", "ca_fingerprint": "c",
                                         "coordinator_signing_key": b"k"})()
    folder.create(invitation)
    assert not any(path.exists() for path in leftovers) and kept.exists()
    assert not list(folder.root.glob(".*.tmp"))
