"""Host page: the plan form, its live preview and rules, and a federation created into the hospital home
with invitations the hospitals' app accepts (no coordinator process here: tests/e2e/test_host_app.py
runs one)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from core.federation.invitation import read_invitation
from core.federation.plan import load_plan


def _fill(page, tmp_path: Path, *, names: str = "St. Mary's\nCity Eye Clinic\nNorth Clinic\nUniversity Hospital",
          lead: bool = True) -> None:
    page.name.setText("Retina network")
    page.mode.setCurrentIndex(page.mode.findData("fscdp"))
    page.hospital_names.setPlainText(names)
    page.lead_trains.setChecked(lead)
    page.expected.setText("500, 800, 1200, 300")
    page.rounds.setValue(50)
    page.sample_rate.setValue(0.05)
    page.noise.setValue(1.0)
    page.delta.setText("1e-4")
    page.hosts.setText("127.0.0.1, localhost")
    page.invitations_dir.set_path(tmp_path / "invitations")


def _preview(page, qtbot):
    page.refresh_preview()
    qtbot.waitUntil(lambda: page.preview is not None or page.preview_summary.kind == "error", timeout=60000)
    return page.preview


def test_the_preview_shows_each_hospitals_cost_noise_and_dropouts(window, qtbot, tmp_path):
    page = window.show_page("host")
    assert page.chooser.currentData() is None and page.new_panel.isVisible()  # nothing hosted yet
    _fill(page, tmp_path)
    preview = _preview(page, qtbot)
    plan = preview.plan
    # K = 4 and this site trains, so t = 1; the rule 2m > K + t gives m = 3: one hospital may drop out.
    assert (plan.hospitals, plan.threshold, plan.colluders) == (4, 3, 1)
    assert preview.dropouts_tolerated == 1 and "1 hospital(s) may drop out" in page.preview_summary.text()
    assert preview.noise_std_per_hospital == pytest.approx(1.0 / 2 ** 0.5)
    assert "0.7071" in page.preview_summary.text()
    assert page.preview_table.rowCount() == 4
    epsilon = plan.epsilon_cost(500)
    assert page.preview_table.item(0, 2).text() == f"{epsilon:.3g}" and page.preview_table.item(3, 1).text() == "300"
    rules = page.rules.text()
    assert "2m &gt; K + t (6 &gt; 5)" in rules and "t &lt; K (1 &lt; 4)" in rules
    assert "always counts among the t" in rules and page.create_button.isEnabled()

    # A target ε instead of σ: the smallest σ whose whole plan stays within it.
    page.noise_source.setCurrentIndex(page.noise_source.findData("epsilon"))
    page.noise.setValue(2.0)
    preview = _preview(page, qtbot)
    assert preview.noise_multiplier > 1.0 and max(h.epsilon for h in preview.hospitals) <= 2.0


def test_a_training_lead_site_cannot_plan_without_colluders(window, qtbot, tmp_path):
    page = window.show_page("host")
    _fill(page, tmp_path)
    page.colluders.setValue(0)
    page.threshold.setValue(3)
    _preview(page, qtbot)
    assert page.preview is None and page.preview_summary.kind == "error"
    assert "counts among the t colluding hospitals" in page.preview_summary.text()
    assert not page.create_button.isEnabled()
    page.lead_trains.setChecked(False)  # a coordinator that does not train may plan t = 0 (against it alone)
    preview = _preview(page, qtbot)
    assert preview is not None and preview.plan.colluders == 0


def test_delta_above_one_over_n_is_flagged_before_creating(window, qtbot, tmp_path):
    page = window.show_page("host")
    _fill(page, tmp_path)
    page.delta.setText("0.001")  # not below 1/1200: that hospital's client would refuse the plan
    preview = _preview(page, qtbot)
    assert [h.delta_ok for h in preview.hospitals] == [True, True, False, True]
    assert page.preview_summary.kind == "warning" and "below 1/1200" in page.preview_table.item(2, 2).text()
    assert not page.create_button.isEnabled()


def test_a_port_in_use_is_reported(window, qtbot):
    page = window.show_page("host")
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        page.port.setValue(busy.getsockname()[1])
        page.check_port()
        qtbot.waitUntil(lambda: page.port_note.kind != "info", timeout=20000)
        assert page.port_note.kind == "error" and "in use" in page.port_note.text()
    page.check_port()  # closed now: free
    qtbot.waitUntil(lambda: page.port_note.kind == "ok", timeout=20000)
    assert "firewall" in page.port_note.text()


def test_the_host_flow_writes_the_federation_into_the_home_and_invitations_the_app_accepts(window, qtbot, tmp_path):
    from core.federation.tls import certificate_fingerprint
    from gui.federation_jobs import review_invitation

    page = window.show_page("host")
    _fill(page, tmp_path)
    _preview(page, qtbot)
    page.create()
    qtbot.waitUntil(lambda: page.folder is not None, timeout=60000)
    home = window.context.home
    folder = page.folder
    assert folder.parent == home.coordinators and page.hosted_panel.isVisible()
    plan = load_plan(folder / "plan.toml")
    assert plan.hospital_names == ["St. Mary's", "City Eye Clinic", "North Clinic", "University Hospital"]
    assert (plan.threshold, plan.colluders, plan.rounds, plan.sample_rate) == (3, 1, 50, 0.05)

    invitations = sorted((tmp_path / "invitations").glob("*.invite"))
    sheets = sorted((tmp_path / "invitations").glob("*.sheet.html"))
    assert len(invitations) == len(sheets) == 4
    assert not (folder / "invitations").exists()  # only in the folder the user chose
    ca = certificate_fingerprint((folder / "tls" / "ca.pem").read_text())
    assert page.fingerprint.text().replace("<br>", " ").split() == ca.split()
    for path, sheet in zip(invitations, sheets, strict=True):
        assert oct(path.stat().st_mode & 0o777) == "0o600"
        invitation = read_invitation(path)
        assert invitation.ca_fingerprint == ca and invitation.coordinator_url.startswith("https://127.0.0.1:")
        text = sheet.read_text()
        assert all(group in text for group in ca.split()) and invitation.token not in text
        # What the Federation page of a hospital's app does with it: a plan it can review and join.
        review = review_invitation(path, num_images=500, home=window.context.home)
        assert review.invitation.plan_hash == invitation.plan_hash

    pdfs = page.save_pdfs()
    assert len(pdfs) == 4 and all(p.read_bytes().startswith(b"%PDF") for p in pdfs)

    # The dashboard reads the folder: everyone invited, nobody enrolled, the coordinator not running.
    qtbot.waitUntil(lambda: page.status is not None, timeout=30000)
    assert page.service_label.text() == "Stopped" and page.start_button.isEnabled()
    assert page.hospitals_table.rowCount() == 4 and page.hospitals_table.item(0, 1).text() == "invited"
    assert page.round_label.text().startswith("Waiting for the hospitals to enroll")

    # Pausing before the start is remembered in the folder (the coordinator reads it when it runs).
    page.set_paused(True)
    qtbot.waitUntil(lambda: (folder / "hold").exists() and page.resume_button.isEnabled(), timeout=20000)
    page.set_paused(False)
    qtbot.waitUntil(lambda: not (folder / "hold").exists(), timeout=20000)

    # Reopening the app finds it again, as the newest hosted federation.
    page.reload_hosted()
    assert Path(page.chooser.currentData()) == folder

    # This site trains too: its own invitation (hospital 1) opens on the Federation page.
    assert page.train_here_button.isVisibleTo(page)
    page.train_here()
    assert window.current_page == "federation" and window.context.settings.invitation == str(invitations[0])


def test_quitting_stops_only_the_coordinators_nobody_asked_to_keep(window, monkeypatch, tmp_path):
    page = window.pages["host"]
    stopped = []
    monkeypatch.setattr("gui.host_jobs.stop_coordinator", lambda folder, wait=True: stopped.append((folder, wait)))
    page._keep = {tmp_path / "started-here": False, tmp_path / "kept": True}
    page.stop_on_quit()
    assert stopped == [(tmp_path / "started-here", False)]  # SIGTERM only: quitting does not wait for it
