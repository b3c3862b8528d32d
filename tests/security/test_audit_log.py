"""The hospital's audit log: every entry chained by hash and signed; any edit, removal or reordering is
found, and several processes can append to one log."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.audit import AuditLog, read_audit_log, verify_audit_log
from core.errors import AuditLogError
from core.signing import public_key_bytes

REPO = Path(__file__).resolve().parents[2]
KEY = Ed25519PrivateKey.generate()
PUBLIC = public_key_bytes(KEY)


def _write(path, n=4):
    log = AuditLog(path, key=KEY)
    for i in range(n):
        log.append(what=f"upload {i}", payload=bytes([i]) * (10 + i), round=i + 1, phase="mask",
                   destination="POST /v1/rounds/1/1/mask")
    return path


def test_intact_log_verifies_and_records_sizes_and_hashes(tmp_path):
    path = _write(tmp_path / "audit.jsonl")
    result = verify_audit_log(path, PUBLIC)
    assert result.ok and result.entries == 4 and result.total_bytes == 10 + 11 + 12 + 13
    assert result.signatures_checked and "signed by the hospital key" in result.to_text()
    unchecked = verify_audit_log(path)
    assert unchecked.ok and not unchecked.signatures_checked and "NOT checked" in unchecked.to_text()
    entries = read_audit_log(path)
    assert [e.round for e in entries] == [1, 2, 3, 4]
    import hashlib

    assert entries[2].sha256 == hashlib.sha256(bytes([2]) * 12).hexdigest()
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_reopening_continues_the_chain(tmp_path):
    path = _write(tmp_path / "audit.jsonl", 2)
    AuditLog(path, key=KEY).append(what="later", payload=b"x", federation="fed-1", ledger_key="fed-1:3:0")
    result = verify_audit_log(path, PUBLIC)
    assert result.ok and result.entries == 3
    assert read_audit_log(path)[-1].ledger_key == "fed-1:3:0"
    assert AuditLog(path, key=KEY).released_keys() == {"fed-1:3:0"}


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
    result = verify_audit_log(path, PUBLIC)
    assert not result.ok
    assert result.broken_at_line == line
    assert result.reason
    assert f"line {line}" in result.to_text()


def test_a_torn_last_line_is_cut_before_appending(tmp_path):
    path = _write(tmp_path / "audit.jsonl", 2)
    with open(path, "ab") as handle:
        handle.write(b'{"seq": 2, "partial')  # crash while writing: that send never happened
    assert not verify_audit_log(path).ok
    AuditLog(path, key=KEY).append(what="after restart", payload=b"abc")
    result = verify_audit_log(path, PUBLIC)
    assert result.ok and result.entries == 3


def test_missing_log_is_a_clear_error(tmp_path):
    with pytest.raises(AuditLogError, match="No audit log"):
        verify_audit_log(tmp_path / "nothing.jsonl")


def test_audit_verify_command_checks_the_homes_log_with_its_identity_key(tmp_path, capsys):
    from core.cli import main
    from core.home import HospitalHome

    home = HospitalHome(tmp_path / "home")
    log = AuditLog(home.audit_log, key=home.identity())
    for i in range(4):
        log.append(what=f"upload {i}", payload=b"x" * (i + 1), round=i)
    assert main(["audit", "verify", "--home", str(home.root)]) == 0
    out = capsys.readouterr().out
    assert "intact: 4 entries" in out and "signed by the hospital key" in out
    assert main(["audit", "verify", str(home.root), "--json"]) == 0  # a home folder as PATH: its own key
    report = json.loads(capsys.readouterr().out)
    assert report["signatures_checked"] is True and report["entries"] == 4

    # Another hospital's key: every signature fails.
    other = Ed25519PrivateKey.generate()
    assert main(["audit", "verify", "--home", str(home.root), "--public-key",
                 public_key_bytes(other).hex()]) == 1
    assert "signature is not the hospital's" in capsys.readouterr().out

    lines = home.audit_log.read_text().splitlines()
    del lines[2]
    home.audit_log.write_text("\n".join(lines) + "\n")
    assert main(["audit", "verify", "--home", str(home.root)]) == 1
    assert "BROKEN at line 3" in capsys.readouterr().out


def test_the_default_is_the_default_homes_log(capsys):
    from core.cli import main
    from core.home import HospitalHome

    home = HospitalHome.at()
    AuditLog(home.audit_log, key=home.identity()).append(what="one", payload=b"1")
    assert main(["audit", "verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(home.audit_log) and report["signatures_checked"] is True


def test_processes_appending_at_once_keep_one_valid_chain(tmp_path):
    """The app, a `dopamine join` and a `dopamine train` share one log: seq and prev come from the file
    under an exclusive lock, never from one process's memory."""
    from core.signing import save_private_key

    key_file = tmp_path / "key.pem"
    save_private_key(KEY, key_file)
    path = tmp_path / "audit.jsonl"
    writers = 4
    per_writer = 25
    # Each writer opens its AuditLog before any writes, as a long-running process would.
    code = textwrap.dedent(f"""
        import sys
        from core.audit import AuditLog
        from core.signing import load_private_key
        log = AuditLog({str(path)!r}, key=load_private_key({str(key_file)!r}))
        sys.stdin.readline()
        for i in range({per_writer}):
            log.append(what=f"writer {{sys.argv[1]}} entry {{i}}", payload=b"x" * 100)
    """)
    processes = [subprocess.Popen([sys.executable, "-c", code, str(n)], cwd=REPO, stdin=subprocess.PIPE,
                                  env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
                 for n in range(writers)]
    for process in processes:
        process.stdin.write(b"go\n")
        process.stdin.flush()
    for process in processes:
        process.stdin.close()
        assert process.wait(timeout=120) == 0
    result = verify_audit_log(path, PUBLIC)
    assert result.ok, result.to_text()
    assert result.entries == writers * per_writer
    assert [e.seq for e in read_audit_log(path)] == list(range(writers * per_writer))


def test_a_wrong_key_type_is_refused(tmp_path):
    with pytest.raises(AuditLogError, match="identity key"):
        AuditLog(tmp_path / "audit.jsonl", key=b"not a key")
