"""Privacy page: the cap is saved in the ledger, charges show as a table and a curve, plans over the
cap are refused before anything runs, and the ledger exports."""

from __future__ import annotations

import csv
import json

import pytest
from PySide6.QtWidgets import QFileDialog

from core.privacy.ledger import PrivacyLedger


def _wait_snapshot(qtbot, page, *, exists=True):
    qtbot.waitUntil(lambda: page.snapshot is not None and page.snapshot.exists == exists, timeout=20000)


def test_cap_charges_curve_and_a_refused_plan(window, qtbot):
    page = window.show_page("privacy")
    _wait_snapshot(qtbot, page, exists=False)
    assert "No private work yet" in page.spent_detail.text()

    page.cap_enabled.setChecked(True)
    page.cap_spin.setValue(2.0)
    page.delta_edit.setText("1e-5")
    page.snapshot = None
    page.save_cap()
    _wait_snapshot(qtbot, page)
    with PrivacyLedger(window.context.ledger_path) as ledger:
        assert (ledger.max_epsilon, ledger.delta) == (2.0, 1e-5)
    # The change went through core's one cap-change function: it is in the signed audit log.
    from core.audit import read_audit_log

    (entry,) = read_audit_log(window.context.audit_log_path)
    assert entry.kind == "ledger" and "none -> 2" in entry.what and "Privacy page" in entry.what
    assert page.cap_notice.isVisible() and page.cap_notice.kind == "ok"
    with PrivacyLedger(window.context.ledger_path) as ledger:
        ledger.charge(noise_multiplier=1.2, sample_rate=0.01, steps=200, description="local run, epoch 1")
        ledger.charge(noise_multiplier=1.2, sample_rate=0.01, steps=200, description="local run, epoch 2")
        spent = ledger.spent()
    window.context.ledger_changed.emit()
    qtbot.waitUntil(lambda: page.table.rowCount() == 2, timeout=20000)
    assert page.table.item(1, 1).text() == "local run, epoch 2"
    assert page.curve.series("ε after charge") == ([1.0, 2.0], [pytest.approx(page.snapshot.entries[0].epsilon_after),
                                                               pytest.approx(spent)])
    assert page.spent_label.text() == f"ε = {spent:.3g} of 2"
    assert 0 < page.spent_bar.value() < 1000

    # A plan that would pass the cap is refused, and nothing is charged for asking.
    page.plan_sigma.setValue(0.5)
    page.plan_q.setValue(0.1)
    page.plan_steps.setValue(5000)
    page.check_plan()
    qtbot.waitUntil(lambda: page.last_verdict is not None, timeout=20000)
    assert not page.last_verdict.allowed
    assert page.verdict.kind == "error" and page.verdict.text().startswith("Refused:")
    page.last_verdict = None
    page.plan_sigma.setValue(5.0)
    page.plan_q.setValue(0.001)
    page.plan_steps.setValue(10)
    page.check_plan()
    qtbot.waitUntil(lambda: page.last_verdict is not None, timeout=20000)
    assert page.last_verdict.allowed and page.verdict.text().startswith("Allowed:")
    with PrivacyLedger(window.context.ledger_path) as ledger:
        assert len(ledger.entries()) == 2


def test_the_ledger_exports_as_csv_and_json(window, qtbot, tmp_path, monkeypatch):
    with PrivacyLedger(window.context.ledger_path, max_epsilon=5.0, delta=1e-5) as ledger:
        ledger.charge(noise_multiplier=1.0, sample_rate=0.02, steps=100, description="a charge")
    page = window.show_page("privacy")
    _wait_snapshot(qtbot, page)
    for fmt in ("csv", "json"):
        target = tmp_path / f"ledger.{fmt}"
        monkeypatch.setattr(QFileDialog, "getSaveFileName", lambda *a, t=target, **k: (str(t), ""))
        page.export(fmt)
        qtbot.waitUntil(target.exists, timeout=20000)
    rows = list(csv.DictReader((tmp_path / "ledger.csv").open()))
    assert len(rows) == 1 and rows[0]["description"] == "a charge"
    assert json.loads((tmp_path / "ledger.json").read_text())["max_epsilon"] == 5.0


def test_a_bad_delta_is_explained(window, qtbot):
    page = window.show_page("privacy")
    page.delta_edit.setText("lots")
    page.save_cap()
    from PySide6.QtWidgets import QMessageBox

    box = window.findChild(QMessageBox, "errorDialog")
    assert box is not None and "not a number" in box.text()


def test_a_cap_without_any_delta_asks_for_one_in_plain_words(window, qtbot):
    page = window.show_page("privacy")
    _wait_snapshot(qtbot, page, exists=False)
    page.delta_edit.setText("")
    page.save_cap()
    from PySide6.QtWidgets import QMessageBox

    box = window.findChild(QMessageBox, "errorDialog")
    assert box is not None and "Type δ first" in box.text() and ".sqlite" not in box.text()
    assert not window.context.ledger_path.exists()  # nothing written


def test_lowering_the_cap_below_what_was_spent_is_allowed_and_said(window, qtbot):
    from core.audit import read_audit_log

    with PrivacyLedger(window.context.ledger_path, max_epsilon=10.0, delta=1e-5) as ledger:
        ledger.charge(noise_multiplier=1.0, sample_rate=0.02, steps=500, description="a run")
        spent = ledger.spent()
    page = window.show_page("privacy")
    _wait_snapshot(qtbot, page)
    page.cap_enabled.setChecked(True)
    page.cap_spin.setValue(round(spent / 2, 2))
    page.save_cap()
    qtbot.waitUntil(lambda: page.cap_notice.isVisible(), timeout=20000)
    assert page.cap_notice.kind == "warning" and "below the epsilon" in page.cap_notice.text()
    with PrivacyLedger(window.context.ledger_path) as ledger:
        assert ledger.max_epsilon == round(spent / 2, 2)
    assert [e.kind for e in read_audit_log(window.context.audit_log_path)] == ["ledger"]


def test_the_audit_card_measures_the_planned_settings_off_the_ui_thread(window, qtbot, tmp_path, monkeypatch):
    import threading

    import gui.pages.privacy as privacy_page

    threads = []
    real_run = privacy_page.run_audit

    def recording_run(settings, *, progress, cancel):
        threads.append(threading.current_thread())
        return real_run(settings, progress=progress, cancel=cancel)

    monkeypatch.setattr(privacy_page, "run_audit", recording_run)
    page = window.show_page("privacy")
    _wait_snapshot(qtbot, page, exists=False)
    page.plan_sigma.setValue(1.5)
    page.plan_q.setValue(0.5)
    page.plan_steps.setValue(4)
    page.delta_edit.setText("1e-5")
    page.audit_sizes = {"gradient_canaries": 40, "input_canaries": 10, "real_images": 4, "image_size": 16}
    page.start_audit()
    assert not page.audit_button.isEnabled() and page.audit_cancel_button.isEnabled()
    qtbot.waitUntil(lambda: page.last_audit is not None, timeout=60000)
    assert threads and threads[0] is not threading.main_thread()
    result = page.last_audit
    assert (result.config["noise_multiplier"], result.config["sample_rate"], result.config["steps"],
            result.config["delta"]) == (1.5, 0.5, 4, 1e-5)
    assert page.audit_result.kind == "ok" and page.audit_button.isEnabled()
    assert "Measured at least ε" in page.audit_result.text() and "guaranteed at most ε" in page.audit_result.text()
    assert not window.context.ledger_path.exists()  # nothing charged, no ledger opened
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", lambda *a, **k: str(tmp_path / "report"))
    page.save_audit_report()
    qtbot.waitUntil(lambda: (tmp_path / "report" / "audit.html").exists(), timeout=20000)


def test_an_audit_too_long_for_this_computer_is_refused_before_it_starts(window, qtbot):
    from PySide6.QtWidgets import QMessageBox

    page = window.show_page("privacy")
    page.plan_steps.setValue(50_000)
    page.start_audit()
    box = window.findChild(QMessageBox, "errorDialog")
    assert box is not None and "dopamine audit-dp" in box.text()
    assert page.audit_job is None and page.audit_button.isEnabled()


def test_an_audit_result_crosses_a_process_boundary_as_json():
    import math

    from core.jobs import CancelToken
    from gui.child_jobs import JOBS

    audit_child, _decode_event, audit_result = JOBS["audit"]

    settings = {"mode": "cdp", "noise_multiplier": 0.0, "sample_rate": 0.5, "steps": 2, "delta": 1e-5,
                "accountant": "rdp", "gradient_canaries": 20, "input_canaries": 0, "real_images": 4, "image_size": 16}
    data = audit_child({"settings": settings}, lambda f, m: None, CancelToken(), lambda event: None)
    result = audit_result(json.loads(json.dumps(data, allow_nan=False)))
    assert math.isinf(result.epsilon) and result.summary() == data["summary"]
    assert result.bounds["gradient"].to_dict() == data["bounds"]["gradient"]
    assert result.config == data["config"] and not result.exceeds_claim
