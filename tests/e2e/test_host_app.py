"""The lead site hosts a federation from the app: the Host page writes the plan and the invitations,
starts the coordinator as a background process, pauses, stops and restarts it, and its dashboard shows
the rounds advancing and each hospital's ε; two hospitals take part with the real `dopamine join` CLI
over loopback HTTPS, and the finished model lands on the Models page."""

from __future__ import annotations

import pytest

from core.federation.service import CoordinatorService, coordinator_epsilon
from core.federation.simulate import HospitalProcess, free_port
from core.home import HospitalHome
from core.privacy.ledger import PrivacyLedger

ROUNDS = 3
IMAGES = 24  # tests/e2e/conftest.py: PER_HOSPITAL


@pytest.fixture
def window(qtbot):
    from gui.app import application, create_window

    app = application([])
    win = create_window(app)
    qtbot.addWidget(win)
    win.resize(1280, 800)
    win.show()
    yield win
    win.context.runner.cancel_all()
    assert win.context.runner.wait_all(60000)


def _charges(home) -> int:
    path = HospitalHome.at(home).ledger
    if not path.exists():
        return 0
    with PrivacyLedger(path) as ledger:
        return len(ledger.entries())


def test_the_app_hosts_a_fscdp_federation_that_two_cli_hospitals_finish(window, qtbot, tmp_path, demo_data,
                                                                       monkeypatch):
    monkeypatch.setattr("gui.pages.host.confirm", lambda *args, **kwargs: True)
    page = window.show_page("host")
    page.name.setText("Hosted from the app")
    page.mode.setCurrentIndex(page.mode.findData("fscdp"))
    page.hospital_names.setPlainText("North Hospital\nSouth Clinic")
    page.lead_trains.setChecked(False)
    page.expected.setText(str(IMAGES))
    page.rounds.setValue(ROUNDS)
    page.image_size.setValue(32)
    page.sample_rate.setValue(0.5)
    page.noise.setValue(1.0)
    page.delta.setText("1e-3")
    page.hosts.setText("127.0.0.1, localhost")
    page.port.setValue(free_port())
    page.eval_data.set_path(demo_data / "test")
    page.invitations_dir.set_path(tmp_path / "invitations")
    page.refresh_preview()
    qtbot.waitUntil(lambda: page.preview is not None, timeout=60000)
    assert (page.preview.plan.threshold, page.preview.plan.colluders) == (2, 1)
    page.create()
    qtbot.waitUntil(lambda: page.folder is not None, timeout=60000)
    folder = page.folder
    invitations = sorted((tmp_path / "invitations").glob("*.invite"))
    hospitals = [HospitalProcess(n, invitation, demo_data / f"hospital_{n:02d}", tmp_path / "homes" / f"h{n:02d}",
                                 tmp_path / "logs" / f"hospital_{n:02d}.err", max_epsilon=100.0)
                 for n, invitation in enumerate(invitations, start=1)]
    seen: list[tuple[int, tuple]] = []

    def status_is(condition) -> bool:
        status = page.status
        if status is not None:
            epsilons = tuple(h.epsilon for h in status.hospitals)
            if not seen or seen[-1] != (status.rounds_finished, epsilons):
                seen.append((status.rounds_finished, epsilons))
        return status is not None and condition(status)

    page._poll.setInterval(100)  # the test checks that the dashboard follows each round: read often
    try:
        page.start()
        qtbot.waitUntil(lambda: status_is(lambda s: s.running and s.healthy), timeout=120000)
        assert page.service_label.text() == "Running" and page.stop_button.isEnabled()
        # Paused before the first round: the hospitals enroll and confirm the roster, then round 1 waits
        # at its start (the round keys), where nothing is computed or charged.
        page.set_paused(True)
        qtbot.waitUntil(lambda: (folder / "hold").exists(), timeout=30000)
        for hospital in hospitals:
            hospital.start()  # `dopamine join INVITATION --data ... --accept-roster any`
        qtbot.waitUntil(lambda: status_is(lambda s: s.paused and s.round == 1 and s.phase == "advertise"
                                          and all(h.online for h in s.hospitals)), timeout=240000)
        assert "paused" in page.round_label.text() and page.hospitals_table.item(0, 2).text() == "online"
        qtbot.wait(3000)
        assert status_is(lambda s: s.rounds_finished == 0 and s.phase == "advertise")
        assert [_charges(h.home) for h in hospitals] == [0, 0]

        # Stop the coordinator (hospitals keep retrying), start it again from the app, resume.
        page.stop()
        qtbot.waitUntil(lambda: status_is(lambda s: not s.running), timeout=120000)
        assert page.service_label.text() == "Stopped" and all(h.running for h in hospitals)
        page.start()
        qtbot.waitUntil(lambda: status_is(lambda s: s.running and s.healthy), timeout=120000)
        assert page.status.round == 1 and page.status.phase == "advertise"  # resumed where it was
        page.set_paused(False)
        qtbot.waitUntil(lambda: status_is(lambda s: s.status == "finished"), timeout=300000)
        for hospital in hospitals:
            hospital.process.wait(timeout=120)
            assert hospital.process.returncode == 0, hospital.log_path.read_text()[-3000:]
    finally:
        for hospital in hospitals:
            hospital.kill()
        CoordinatorService(folder).stop()

    # The dashboard followed the rounds and the coordinator's ε as they advanced (read every 0.1 s here, one
    # read at a time, so a fast round can still pass between two reads).
    finished = [rounds for rounds, _ in seen]
    assert finished == sorted(finished) and len({r for r in finished if r > 0}) >= 2 and finished[-1] == ROUNDS
    plan = page.preview.plan
    for rounds, epsilons in seen:
        assert all(e == pytest.approx(coordinator_epsilon(plan, rounds, IMAGES)) for e in epsilons if rounds)
    status = page.status
    assert [h.rounds_included for h in status.hospitals] == [ROUNDS, ROUNDS]
    assert all(h.bytes_received > 0 for h in status.hospitals)
    for row, (hospital, record) in enumerate(zip(hospitals, status.hospitals, strict=True)):
        with PrivacyLedger(HospitalHome.at(hospital.home).ledger) as ledger:
            spent = ledger.spent()  # the hospital's own ledger: the authority
        assert record.epsilon == pytest.approx(spent, rel=1e-6)  # no attempt failed: the two counts agree
        assert page.hospitals_table.item(row, 6).text() == f"{record.epsilon:.3g}"
        assert page.hospitals_table.item(row, 4).text() == str(ROUNDS)
    accuracy = page.metrics_plot.series("accuracy")[0]
    assert accuracy and accuracy[-1] == ROUNDS  # measured on this site's held-out set

    # The final signed model is on the Models page, signed by a key this home trusts.
    qtbot.waitUntil(lambda: page.models_button.isVisible(), timeout=60000)
    models = window.show_page("models")
    final = f"{folder.name}-final.dpm"
    qtbot.waitUntil(lambda: any(e.path.name == final for e in models.entries), timeout=60000)
    entry = next(e for e in models.entries if e.path.name == final)
    assert entry.signature_ok and entry.level == "trusted", entry.signature_text
