"""Activity page: the hospital home's signed audit log, verified with the home's identity key; an edited
log shows as broken, and a log with no key to check it against says its signatures were not checked."""

from __future__ import annotations

import json
import shutil

from core.audit import AuditLog


def _write_log(home, count=3):
    log = AuditLog(home.audit_log, key=home.identity())
    for i in range(count):
        log.append(what="masked update", payload=bytes(100 * (i + 1)), round=i + 1, phase="upload",
                   destination="POST /rounds/upload", federation="demo", ledger_key=f"demo:{i + 1}:0")
    return home.audit_log


def test_the_homes_log_is_listed_and_verified_with_its_key(window, qtbot):
    from core.budget import change_cap

    home = window.context.home
    path = _write_log(home)
    change_cap(home, 4.0, delta=1e-5, source="test")  # a cap change is on the record too
    page = window.show_page("activity")
    qtbot.waitUntil(lambda: page.view is not None, timeout=10000)
    assert page.current_path() == path == window.context.audit_log_path
    assert page.verdict.kind == "ok"
    text = page.verdict.text()
    assert "4 entries verified" in text and "signed by this hospital" in text and "600 bytes" in text
    assert page.view.verification.signatures_checked
    assert page.table.rowCount() == 4
    assert [page.table.item(r, 2).text() for r in range(3)] == ["1", "2", "3"]
    assert page.table.item(0, 4).text() == "masked update"
    assert page.table.item(3, 3).text() == "privacy cap" and "none -> 4" in page.table.item(3, 4).text()


def test_an_edited_entry_breaks_the_chain(window, qtbot):
    path = _write_log(window.context.home)
    lines = path.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["bytes"] = 1  # someone hides how much was sent
    lines[1] = json.dumps(entry, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")

    page = window.show_page("activity")
    qtbot.waitUntil(lambda: page.view is not None, timeout=10000)
    assert page.verdict.kind == "error"
    assert "BROKEN at line 2" in page.verdict.text()
    assert "1 earlier entry is intact" in page.verdict.text()


def test_a_copied_log_is_checked_as_a_chain_only_and_says_so(window, qtbot, tmp_path, monkeypatch):
    from PySide6.QtWidgets import QFileDialog

    copy = tmp_path / "copy-of-audit.jsonl"
    shutil.copyfile(_write_log(window.context.home), copy)
    page = window.show_page("activity")
    qtbot.waitUntil(lambda: page.view is not None, timeout=10000)
    page.view = None
    monkeypatch.setattr(QFileDialog, "getOpenFileName", lambda *a, **k: (str(copy), ""))
    page._open_other()
    qtbot.waitUntil(lambda: page.view is not None and page.view.path == copy, timeout=10000)
    assert page.verdict.kind == "warning" and "signatures not checked" in page.verdict.text()


def test_no_log_yet_says_nothing_was_sent(window):
    page = window.show_page("activity")
    assert page.current_path() is None
    assert "has not sent anything" in page.verdict.text()
