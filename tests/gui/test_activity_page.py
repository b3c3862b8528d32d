"""Activity page: the audit log, its chain verified, and a tampered log shown as broken."""

from __future__ import annotations

import json

from core.federation.audit import AuditLog


def _write_log(path, count=3):
    log = AuditLog(path)
    for i in range(count):
        log.append(what="masked update", payload=bytes(100 * (i + 1)), round=i + 1, phase="upload",
                   destination="POST /rounds/upload")
    return path


def test_an_intact_log_is_listed_and_verified(window, qtbot):
    path = _write_log(window.context.federations_folder / "demo-federation" / "audit.jsonl")
    page = window.show_page("activity")
    qtbot.waitUntil(lambda: page.view is not None, timeout=10000)
    assert page.current_path() == path
    assert page.verdict.kind == "ok"
    assert "3 entries verified" in page.verdict.text() and "600 bytes" in page.verdict.text()
    assert page.table.rowCount() == 3
    assert [page.table.item(r, 2).text() for r in range(3)] == ["1", "2", "3"]
    assert page.table.item(0, 4).text() == "masked update"


def test_an_edited_entry_breaks_the_chain(window, qtbot):
    path = _write_log(window.context.federations_folder / "demo-federation" / "audit.jsonl")
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


def test_no_log_yet_says_nothing_was_sent(window):
    page = window.show_page("activity")
    assert page.current_path() is None
    assert "has not sent anything" in page.verdict.text()
