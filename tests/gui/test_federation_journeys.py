"""Federation page journeys without processes: the completion card the moment the last model is published,
the cap set right where joining needs it, and images of other classes refused before joining."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PySide6.QtWidgets import QApplication

from core.federation.events import BudgetCharged, Finished, ModelReceived, RoundStarted
from core.federation.layout import InitConfig, init_federation
from core.federation.simulate import free_port
from core.inference import held_out_evaluation
from core.privacy.ledger import PrivacyLedger
from core.training.metrics import compute_metrics
from gui.federation_jobs import CoordinatorView, Peer
from gui.federation_session import Membership

ROUNDS = 4
DELTA = 1e-3
GRADES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]


@pytest.fixture
def invitation(tmp_path, make_image_folder) -> Path:
    evaluation = make_image_folder(tmp_path / "test", per_class=3, size=40, seed=9)
    init = init_federation(InitConfig(
        folder=tmp_path / "federation", name="Retina network", mode="fscdp", rounds=ROUNDS, hospitals=2,
        hosts=["127.0.0.1"], port=free_port(), image_size=32, sample_rate=0.5, noise_multiplier=1.0,
        max_grad_norm=1.0, lr=0.5, delta=DELTA, eval_data=evaluation))
    return sorted(init.invitations)[0]


def _check_images(window, qtbot, folder: Path) -> None:
    page = window.show_page("data")
    page.check(folder)
    qtbot.waitUntil(lambda: page._job is not None and not page._job.running, timeout=30000)
    # The job marks itself not running in the first slot of its `finished`; qtbot's wait may look before the
    # page's own slots (progress bar, Check button) ran. They were all queued at the emit: deliver them.
    QApplication.processEvents()


def _review(window, qtbot, invitation: Path):
    page = window.show_page("federation")
    page.open_invitation(invitation)
    qtbot.waitUntil(lambda: page.review is not None, timeout=20000)
    return page


def test_a_finished_federation_says_so_at_once_and_hides_what_no_longer_applies(window, qtbot, invitation,
                                                                                 image_folder, tmp_path):
    with PrivacyLedger(window.context.ledger_path) as ledger:
        ledger.set_cap(100.0, DELTA)
    _check_images(window, qtbot, image_folder)
    page = _review(window, qtbot, invitation)
    assert page.cost.isVisibleTo(page) and page.leave_button.isVisibleTo(page)
    page.session._set_state(Membership.RUNNING)
    page.handle_event(RoundStarted(round=ROUNDS, rounds=ROUNDS))
    page.handle_event(BudgetCharged(round=ROUNDS, epsilon=2.5, max_epsilon=100.0))

    # The coordinator publishes the last round's model, scored on its held-out images: always "No DR".
    truth = [0] * 12 + [2] * 8
    evaluation = held_out_evaluation(compute_metrics(truth, [0] * 20, 5), truth, GRADES,
                                     described="the coordinator's own held-out images in folder test",
                                     held_by="the coordinator")
    page.handle_event(ModelReceived(round=ROUNDS, metrics=evaluation, included=True))
    assert window.context.federation.state == "finished" and page.state_label.text() == "Finished"
    assert page.completion_card.isVisibleTo(page)
    for gone in (page.cost, page.join_button, page.pause_button, page.leave_button, page.until_cap, page.cap_box):
        assert not gone.isVisibleTo(page)  # no future cost, nothing to resume or leave
    rows = {key: page.completion_rows.value(key) for key in page.completion_rows.keys()}
    assert rows["Accuracy"] == "0.600 (always answering “No DR”: 0.600)"
    assert rows["ε spent by this hospital"] == "2.5 in total (cap 100)"
    assert page.completion_banner.kind == "error" and "No better than always answering “No DR”" in \
        page.completion_banner.text()
    assert not page.open_final_button.isEnabled()  # the final model is still being fetched

    final = page.review.workdir / "models" / "final.dpm"
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(b"model")
    page.handle_event(Finished(reason="completed", rounds_participated=[1, 2, 3, 4], epsilon=2.5, bytes_sent=9,
                               model_path=str(final)))
    assert page.open_final_button.isEnabled()
    assert page.completion_rows.value("This hospital's rounds") == "its update is in 4 round(s)"
    opened = []
    window.context.install_navigation(window.show_page, opened.append)
    page.open_final_button.click()
    assert opened == [final]

    # Peers are shown as the coordinator's view says now: nobody is still "active" in a finished federation.
    peer = Peer("h1", "St. Mary's", "active", "AB " * 16, True, 4, True)
    page.show_view(CoordinatorView(status="finished", round=ROUNDS, rounds=ROUNDS, phase="", model_round=ROUNDS,
                                   peers=[peer]))
    assert page.peers.item(0, 1).text() == "finished"


def test_the_cap_is_set_where_joining_needs_it_with_the_plans_delta(window, qtbot, invitation, image_folder):
    _check_images(window, qtbot, image_folder)
    page = _review(window, qtbot, invitation)
    review = page.review
    assert review.needs_cap and not page.join_button.isEnabled()
    assert page.cap_box.isVisibleTo(page) and not page.privacy_link.isVisibleTo(page)  # no detour
    assert page.cap_delta.text() == "0.001" and "no privacy cap yet" in page.cap_text.text()
    assert page.cap_value.value() >= review.epsilon_cost

    page.set_cap_button.click()
    qtbot.waitUntil(lambda: page.review is not review and not page.review.needs_cap, timeout=20000)
    assert not page.cap_box.isVisibleTo(page) and page.join_button.isEnabled()
    with PrivacyLedger(window.context.ledger_path) as ledger:
        assert ledger.max_epsilon == pytest.approx(page.cap_value.value()) and ledger.delta == DELTA
    entries = [json.loads(line) for line in window.context.audit_log_path.read_text().splitlines()]
    assert any("Federation page" in entry["what"] for entry in entries)  # in the signed audit log


def test_images_of_other_classes_are_refused_before_joining(window, qtbot, invitation, make_image_folder,
                                                            tmp_path):
    with PrivacyLedger(window.context.ledger_path) as ledger:
        ledger.set_cap(100.0, DELTA)
    _check_images(window, qtbot, make_image_folder(tmp_path / "eyes", classes=("glaucoma", "normal"), size=40))
    page = _review(window, qtbot, invitation)
    assert "not the classes of the plan of Retina network" in page.review.problem
    assert not page.join_button.isEnabled() and page.cost.kind == "error"
    assert "Joining is refused" in page.cost.text()
