"""Federation page: a real 2-hospital federation over loopback HTTPS, this window being hospital 1.

The coordinator and hospital 2 are separate processes (as in tests/e2e); hospital 1 is driven through
the page: open the invitation, see the plan and its cost against the cap, join, pause, resume, and
watch rounds advance to the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import NetworkError
from core.federation.events import ErrorEvent, RoundStarted
from core.federation.layout import InitConfig, init_federation
from core.federation.simulate import CoordinatorProcess, HospitalProcess, free_port
from core.privacy.ledger import PrivacyLedger

ROUNDS = 4
DELTA = 1e-3


def _init(tmp_path: Path, make_image_folder):
    data = [make_image_folder(tmp_path / f"hospital_{i}", per_class=12, size=40, seed=i) for i in (1, 2)]
    evaluation = make_image_folder(tmp_path / "test", per_class=6, size=40, seed=9)
    init = init_federation(InitConfig(
        folder=tmp_path / "federation", name="GUI test federation", mode="fscdp", rounds=ROUNDS, hospitals=2,
        hosts=["127.0.0.1", "localhost"], port=free_port(), image_size=32, sample_rate=0.5,
        noise_multiplier=1.0, max_grad_norm=1.0, lr=0.5, delta=DELTA, eval_data=evaluation,
        compute_phase_timeout_s=90.0, key_phase_timeout_s=60.0))
    return init, sorted(init.invitations), data


@pytest.fixture
def invitation_only(tmp_path, make_image_folder):
    """A federation folder and its invitations, no processes: enough to review a plan."""
    init, invitations, data = _init(tmp_path, make_image_folder)
    return init, invitations[0], data[0]


@pytest.fixture
def federation(tmp_path, make_image_folder):
    init, invitations, data = _init(tmp_path, make_image_folder)
    coordinator = CoordinatorProcess(init.folder, tmp_path / "logs" / "coordinator.out")
    coordinator.start(url=init.coordinator_url, ca_file=init.folder / "tls" / "ca.pem")
    other = HospitalProcess(2, invitations[1], data[1], tmp_path / "hospital_2_home",
                            tmp_path / "logs" / "hospital_2.err", max_epsilon=100.0)
    other.start()
    yield init, invitations[0], data[0]
    other.kill()
    coordinator.stop()


def _prepare_hospital(window, qtbot, data: Path, *, cap: float) -> None:
    with PrivacyLedger(window.context.ledger_path) as ledger:
        ledger.set_cap(cap, DELTA)
    page = window.show_page("data")
    page.check(data)
    qtbot.waitUntil(lambda: window.context.dataset_report is not None, timeout=30000)


def test_a_real_two_hospital_federation_advances_round_by_round(window, qtbot, federation, monkeypatch):
    init, invitation, data = federation
    asked = []
    monkeypatch.setattr("gui.pages.federation.confirm", lambda *args, **kw: asked.append(args[1]) or True)
    _prepare_hospital(window, qtbot, data, cap=100.0)
    page = window.show_page("federation")
    page.open_invitation(invitation)
    qtbot.waitUntil(lambda: page.review is not None, timeout=20000)

    # Before joining: who, where, what, and what it costs against the cap.
    assert page.federation_card.value("Federation") == "GUI test federation"
    assert page.federation_card.value("Coordinator address") == init.coordinator_url
    assert page.federation_card.value("CA fingerprint") == init.ca_fingerprint
    assert page.plan_card.value("Rounds") == str(ROUNDS)
    assert page.plan_card.value("Noise σ") == "1"
    assert "q = 0.5" in page.plan_card.value("Each round") and "m = 2" in page.plan_card.value("Hospitals")
    assert f"Taking part in all {ROUNDS} rounds costs this hospital ε = " in page.cost.text()
    assert page.review.verdict.allowed and page.cost.kind == "privacy"
    assert page.join_button.isEnabled() and page.join_button.text() == "Join"
    assert window.context.federation.state == "invited"

    # Pause before the rounds start (with m = 2 of 2, a pause mid-round stops the federation for
    # everyone, which the page warns about), then join for real.
    page.start()
    assert page.job.precious
    page.pause()
    assert asked == ["Pause the federation?"]
    qtbot.waitUntil(lambda: not page.running, timeout=120000)
    assert page.job.was_cancelled and window.context.federation.state == "paused"
    assert page.join_button.isEnabled()

    # Once both hospitals enrolled, the run stops to have the roster confirmed by a person.
    page.start()
    qtbot.waitUntil(lambda: not page.confirm_roster_button.isHidden(), timeout=180000)
    qtbot.waitUntil(lambda: not page.running, timeout=30000)
    assert page.job.error is None and page.job.result.reason == "roster"
    assert page.peers.rowCount() == 2 and "this hospital" in page.peers.item(0, 0).text()
    assert page.peers.item(0, 3).text().split() == page.my_fingerprint.split()
    assert "Confirm the roster" in page.roster_note.text()
    page.confirm_roster()
    assert asked[-1] == "Confirm the roster?" and page.confirm_roster_button.isHidden()
    qtbot.waitUntil(lambda: page.state_label.text().startswith("Round"), timeout=180000)
    assert window.context.federation.state == "running"
    qtbot.waitUntil(lambda: not page.running, timeout=300000)
    assert page.job.error is None, page.job.error
    assert window.context.federation.state == "finished", "\n".join(page.messages.item(i).text() for i in range(page.messages.count()))
    assert "The federation finished" in page.messages.item(page.messages.count() - 1).text()

    rounds, spent = page.epsilon_plot.series("ε spent")
    assert rounds == list(range(1, ROUNDS + 1)) and spent == sorted(spent)
    assert page.review.epsilon_cost == pytest.approx(spent[-1], rel=1e-6)
    assert page.metrics_plot.series("shared model accuracy")[0][-1] == ROUNDS
    assert not page.join_button.isEnabled()  # finished: nothing to join
    # The completion card, at once, with the final evaluation and the model to open; nothing still to pay.
    assert page.completion_card.isVisibleTo(page) and page.open_final_button.isEnabled()
    assert page.completion_rows.value("Test images") == "12, held by the coordinator"
    assert not page.cost.isVisibleTo(page) and not page.leave_button.isVisibleTo(page)
    with PrivacyLedger(window.context.ledger_path) as ledger:
        assert len(ledger.entries()) == ROUNDS  # one charge per round

    # Identity fingerprints of both hospitals, computed from their keys, for a phone call.
    qtbot.waitUntil(lambda: page.view is not None and len(page.view.peers) == 2, timeout=30000)
    assert all(peer.coordinator_agrees for peer in page.view.peers)
    assert [p.is_this_hospital for p in page.view.peers] == [True, False]
    assert page.peers.item(0, 3).text().split() == page.my_fingerprint.split()
    assert {page.peers.item(r, 1).text() for r in range(2)} == {"finished"}
    assert "Finished" in window.pages["home"].federation_label.text() or \
        "finished" in window.pages["home"].federation_label.text()

    # What left the hospital is on the Activity page, chain intact; the model is on the Models page.
    activity = window.show_page("activity")
    qtbot.waitUntil(lambda: activity.view is not None, timeout=20000)
    assert activity.verdict.kind == "ok" and activity.table.rowCount() > ROUNDS
    models = window.show_page("models")
    qtbot.waitUntil(lambda: any(e.path.name == "final.dpm" for e in models.entries), timeout=20000)
    final = next(e for e in models.entries if e.path.name == "final.dpm")
    assert final.signature_ok and final.signer == "signed by the coordinator of GUI test federation"


def test_a_plan_over_the_cap_is_not_joined_without_consent(window, qtbot, invitation_only):
    init, invitation, data = invitation_only
    _prepare_hospital(window, qtbot, data, cap=0.5)
    page = window.show_page("federation")
    page.open_invitation(invitation)
    qtbot.waitUntil(lambda: page.review is not None, timeout=20000)
    assert not page.review.verdict.allowed
    assert page.cost.kind == "error" and "passes the cap" in page.cost.text()
    assert not page.join_button.isEnabled()
    page.until_cap.setChecked(True)
    assert page.join_button.isEnabled()


def test_network_loss_and_recovery_are_said_in_plain_words(window, qtbot):
    page = window.show_page("federation")
    page.handle_event(ErrorEvent(message="cannot reach the coordinator at https://x (ConnectionError); "
                                         "retrying in 2.0 s", fatal=False))
    assert page.network.isVisible() and page.network.kind == "warning"
    assert "Lost contact with the coordinator" in page.network.text()
    page.handle_event(ErrorEvent(message="still down", fatal=False))
    assert page.messages.count() == 1  # said once, not on every retry
    page.handle_event(RoundStarted(round=3, rounds=5))
    assert page.network.kind == "ok" and "restored" in page.network.text()
    assert page.state_label.text() == "Round 3 of 5"


def test_errors_from_the_child_process_keep_their_type(tmp_path):
    from gui.child_jobs import _raise_error

    with pytest.raises(NetworkError, match="unreachable"):
        _raise_error({"error_type": "NetworkError", "message": "unreachable"})
    with pytest.raises(RuntimeError) as info:
        _raise_error({"error_type": "ZeroDivisionError", "message": "boom", "traceback": "Traceback ..."})
    assert info.value.__dopamine_traceback__ == "Traceback ..."
