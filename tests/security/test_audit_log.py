"""The hospital's audit log: every entry chained by hash; any edit, removal or reordering is found."""

import json

import pytest

from core.errors import FederationError
from core.federation.audit import AuditLog, read_audit_log, verify_audit_log


def _write(path, n=4):
    log = AuditLog(path)
    for i in range(n):
        log.append(what=f"upload {i}", payload=bytes([i]) * (10 + i), round=i + 1, phase="mask",
                   destination="POST /v1/rounds/1/1/mask")
    return path


def test_intact_log_verifies_and_records_sizes_and_hashes(tmp_path):
    path = _write(tmp_path / "audit.jsonl")
    result = verify_audit_log(path)
    assert result.ok and result.entries == 4 and result.total_bytes == 10 + 11 + 12 + 13
    entries = read_audit_log(path)
    assert [e.round for e in entries] == [1, 2, 3, 4]
    import hashlib

    assert entries[2].sha256 == hashlib.sha256(bytes([2]) * 12).hexdigest()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_reopening_continues_the_chain(tmp_path):
    path = _write(tmp_path / "audit.jsonl", 2)
    AuditLog(path).append(what="later", payload=b"x")
    result = verify_audit_log(path)
    assert result.ok and result.entries == 3


@pytest.mark.parametrize("tamper,line", [
    ("edit_bytes", 2), ("edit_what", 3), ("delete", 2), ("swap", 2), ("insert", 3), ("garbage", 4),
])
def test_tampering_is_found_at_the_right_line(tmp_path, tamper, line):
    path = _write(tmp_path / "audit.jsonl")
    lines = path.read_text().splitlines()
    if tamper == "edit_bytes":
        entry = json.loads(lines[1])
        entry["bytes"] = 1
        lines[1] = json.dumps(entry, sort_keys=True)
    elif tamper == "edit_what":
        entry = json.loads(lines[2])
        entry["what"] = "nothing"
        lines[2] = json.dumps(entry, sort_keys=True)
    elif tamper == "delete":
        del lines[1]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif tamper == "insert":
        lines.insert(2, lines[1])
    elif tamper == "garbage":
        lines[3] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    result = verify_audit_log(path)
    assert not result.ok
    assert result.broken_at_line == line
    assert result.reason
    assert f"line {line}" in result.to_text()


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    path = _write(tmp_path / "audit.jsonl", 2)
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 2, "partial')  # crash while writing: that send never happened
    assert not verify_audit_log(path).ok
    AuditLog(path).append(what="after restart", payload=b"abc")
    result = verify_audit_log(path)
    assert result.ok and result.entries == 3


def test_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(FederationError, match="No audit log"):
        verify_audit_log(tmp_path / "nothing.jsonl")


def test_audit_verify_command_says_where_the_chain_breaks(tmp_path, capsys):
    from core.cli import main

    _write(tmp_path / "audit.jsonl")
    assert main(["audit", "verify", str(tmp_path)]) == 0
    assert "intact: 4 entries" in capsys.readouterr().out
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    del lines[2]
    (tmp_path / "audit.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", str(tmp_path)]) == 1
    assert "BROKEN at line 3" in capsys.readouterr().out
