"""The privacy ledger: cap before writing, keys charged once, durability across crashes, export."""

import csv
import json
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from core.errors import LedgerError, PrivacyBudgetExceeded, PrivacyError, ReleaseRefused
from core.privacy.accountant import compute_epsilon, compute_epsilon_history
from core.privacy.ledger import PrivacyLedger

REPO = Path(__file__).resolve().parents[3]
STEP = dict(noise_multiplier=1.0, sample_rate=0.01, steps=100)


def charge(ledger, description="local training", key=None, limit=None, **work):
    return ledger.charge(**{**STEP, **work}, description=description, key=key, limit=limit)


def test_settings_are_stored_and_reopened(tmp_path):
    path = tmp_path / "ledger.sqlite"
    with PrivacyLedger(path, max_epsilon=3.0, delta=1e-5, accountant="prv") as ledger:
        assert (ledger.max_epsilon, ledger.delta, ledger.accountant) == (3.0, 1e-5, "prv")
    with PrivacyLedger(path) as ledger:
        assert (ledger.max_epsilon, ledger.delta, ledger.accountant) == (3.0, 1e-5, "prv")
    with PrivacyLedger(tmp_path / "new.sqlite") as ledger:
        assert (ledger.max_epsilon, ledger.delta, ledger.accountant) == (None, None, "rdp")


def test_conflicting_settings_are_refused(tmp_path):
    path = tmp_path / "ledger.sqlite"
    PrivacyLedger(path, max_epsilon=3.0, delta=1e-5).close()
    with pytest.raises(LedgerError, match="has delta=1e-05, not 1e-06"):
        PrivacyLedger(path, delta=1e-6)
    with pytest.raises(LedgerError, match="has accountant=rdp, not prv"):
        PrivacyLedger(path, accountant="prv")
    PrivacyLedger(path, max_epsilon=3.0, delta=1e-5, accountant="rdp").close()


def test_spent_composes_every_charge(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite", delta=1e-5) as ledger:
        assert ledger.spent() == 0.0
        predicted = ledger.epsilon_if(**STEP)
        first = charge(ledger)
        assert first.epsilon_after == predicted == ledger.spent()
        assert ledger.spent() == compute_epsilon(**{k: STEP[k] for k in STEP}, delta=1e-5)
        charge(ledger, noise_multiplier=2.0, steps=10)
        charge(ledger, steps=50)
        # Equal (noise, rate) rows compose as one term with their steps added.
        expected = compute_epsilon_history([(1.0, 0.01, 150), (2.0, 0.01, 10)], delta=1e-5)
        assert ledger.spent() == pytest.approx(expected, rel=1e-12)
        assert [e.steps for e in ledger.entries()] == [100, 10, 50]
        assert ledger.entries()[-1].epsilon_after == ledger.spent()


def test_overspend_is_refused_before_anything_is_written(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=1.3, delta=1e-5) as ledger:
        charge(ledger)
        spent = ledger.spent()
        would_be = ledger.epsilon_if(**STEP)
        with pytest.raises(PrivacyBudgetExceeded) as info:
            charge(ledger, description="second run")
        message = str(info.value)
        assert f"from epsilon={spent:.3g} to {would_be:.3g}" in message
        assert f"costs {would_be - spent:.3g} more" in message
        assert "cap of 1.3" in message and "nothing was run" in message and "more noise" in message
        assert "\n" not in message
        assert len(ledger.entries()) == 1 and ledger.spent() == spent


def test_cap_can_be_changed_deliberately(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=0.5, delta=1e-5) as ledger:
        with pytest.raises(PrivacyBudgetExceeded):
            charge(ledger)
        ledger.set_cap(5.0)
        charge(ledger)
        ledger.set_cap(None)
        charge(ledger, steps=10_000)
        assert ledger.max_epsilon is None and len(ledger.entries()) == 2
        with pytest.raises(PrivacyError):
            ledger.set_cap(-1.0)


def test_a_key_is_charged_and_run_once_and_asking_again_is_refused(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=10.0, delta=1e-5) as ledger:
        charge(ledger, key="fed:abc:round:7", steps=1)
        spent = ledger.spent()
        with pytest.raises(ReleaseRefused, match="already charged and run once") as info:
            charge(ledger, key="fed:abc:round:7", steps=1)
        assert "\n" not in str(info.value) and "fed:abc:round:7" in str(info.value)
        assert len(ledger.entries()) == 1 and ledger.spent() == spent
        charge(ledger, key="fed:abc:round:8", steps=1)
        assert [e.key for e in ledger.entries()] == ["fed:abc:round:7", "fed:abc:round:8"]
        assert ledger.has_charge("fed:abc:round:7") and not ledger.has_charge("fed:abc:round:9")
        charge(ledger)  # unkeyed work is never confused with a keyed one
        assert ledger.keys() == {"fed:abc:round:7", "fed:abc:round:8"}


def test_a_run_limit_tightens_the_cap_and_never_loosens_it(tmp_path):
    one = compute_epsilon(**STEP, delta=1e-5)
    two = compute_epsilon(**{**STEP, "steps": 2 * STEP["steps"]}, delta=1e-5)
    cap = (one + two) / 2  # room for one charge, not two
    with PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=cap, delta=1e-5) as ledger:
        with pytest.raises(PrivacyBudgetExceeded, match="this run's limit"):
            charge(ledger, limit=one * 0.9)
        assert ledger.entries() == []
        charge(ledger, limit=one * 1.1)
        # A limit above the cap is no licence: the cap still refuses the second charge.
        with pytest.raises(PrivacyBudgetExceeded, match="the cap"):
            charge(ledger, limit=one * 100)
        assert len(ledger.entries()) == 1 and ledger.max_epsilon == cap
        with pytest.raises(PrivacyError, match="limit"):
            charge(ledger, limit=-1.0)
    with PrivacyLedger(tmp_path / "uncapped.sqlite", delta=1e-5) as ledger:
        with pytest.raises(PrivacyBudgetExceeded):
            charge(ledger, limit=one * 0.5)
        assert ledger.entries() == [] and ledger.max_epsilon is None


def test_change_cap_records_the_change_in_the_signed_audit_log(tmp_path):
    from core.audit import read_audit_log, verify_audit_log
    from core.budget import change_cap
    from core.home import HospitalHome
    from core.signing import public_key_bytes

    home = HospitalHome(tmp_path / "home")
    first = change_cap(home, 5.0, delta=1e-5, source="test")
    assert (first.old_cap, first.new_cap, first.old_delta, first.new_delta) == (None, 5.0, None, 1e-5)
    with PrivacyLedger(home.ledger) as ledger:
        charge(ledger)
        spent = ledger.spent()
    lowered = change_cap(home, spent / 2)
    assert lowered.below_spent and "below the epsilon" in lowered.message()
    with PrivacyLedger(home.ledger) as ledger:
        assert ledger.max_epsilon == spent / 2 and ledger.delta == 1e-5
        with pytest.raises(PrivacyBudgetExceeded):
            charge(ledger, steps=1)
    entries = read_audit_log(home.audit_log)
    assert [e.kind for e in entries] == ["ledger", "ledger"]
    assert "none -> 5" in entries[0].what and "delta unset -> 1e-05" in entries[0].what
    assert f"5 -> {spent / 2:g}" in entries[1].what
    assert verify_audit_log(home.audit_log, public_key_bytes(home.identity())).ok
    with pytest.raises(PrivacyError):
        change_cap(home, 0.0)
    assert len(read_audit_log(home.audit_log)) == 2  # a refused change leaves no entry


def test_charge_without_delta_is_refused(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        with pytest.raises(LedgerError, match="no delta yet"):
            charge(ledger)
        assert ledger.entries() == []


def test_invalid_work_is_refused(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite", delta=1e-5) as ledger:
        with pytest.raises(PrivacyError):
            charge(ledger, sample_rate=2.0)
        with pytest.raises(PrivacyError):
            charge(ledger, steps=-1)


def run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO), "DOPAMINE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )


def test_charge_survives_a_crash_right_after_it_returns(tmp_path):
    path = tmp_path / "l.sqlite"
    result = run_python(
        f"""
        import os
        from core.privacy.ledger import PrivacyLedger
        ledger = PrivacyLedger({str(path)!r}, delta=1e-5)
        ledger.charge(noise_multiplier=1.0, sample_rate=0.01, steps=100, description="round 1", key="r1")
        os._exit(1)  # dies before the noised update is sent, without closing anything
        """,
        tmp_path,
    )
    assert result.returncode == 1, result.stderr
    with PrivacyLedger(path) as ledger:
        assert [e.key for e in ledger.entries()] == ["r1"]
        assert ledger.spent() > 0


def test_charge_killed_before_commit_leaves_no_partial_row(tmp_path):
    path = tmp_path / "l.sqlite"
    with PrivacyLedger(path, delta=1e-5) as ledger:
        charge(ledger, key="before")
    result = run_python(
        f"""
        import os, signal
        from core.privacy.ledger import PrivacyLedger

        class Crashing(PrivacyLedger):
            def _before_commit(self):
                os.kill(os.getpid(), signal.SIGKILL)  # row inserted, transaction not committed

        Crashing({str(path)!r}).charge(
            noise_multiplier=1.0, sample_rate=0.01, steps=100, description="lost", key="lost"
        )
        """,
        tmp_path,
    )
    assert result.returncode == -9, result.stderr
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with PrivacyLedger(path) as ledger:
        assert [e.key for e in ledger.entries()] == ["before"]
        charge(ledger, key="after")
        assert [e.key for e in ledger.entries()] == ["before", "after"]


def test_concurrent_charges_cannot_both_pass_the_cap(tmp_path):
    path = tmp_path / "l.sqlite"
    PrivacyLedger(path, delta=1e-5).close()
    one_charge = compute_epsilon(**STEP, delta=1e-5)
    PrivacyLedger(path).set_cap(one_charge * 1.05)
    ledgers = [PrivacyLedger(path) for _ in range(2)]  # separate connections, as two processes would have
    outcomes = []
    barrier = threading.Barrier(2)

    def work(ledger, name):
        barrier.wait()
        try:
            charge(ledger, description=name)
            outcomes.append("charged")
        except PrivacyBudgetExceeded:
            outcomes.append("refused")

    threads = [threading.Thread(target=work, args=(ledger, f"job {i}")) for i, ledger in enumerate(ledgers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["charged", "refused"]
    assert len(ledgers[0].entries()) == 1
    for ledger in ledgers:
        ledger.close()


def test_export_csv_and_json(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite", max_epsilon=8.0, delta=1e-5, accountant="prv") as ledger:
        charge(ledger, description="local, 2 epochs", key="k1")
        charge(ledger, description='quote " and, comma', steps=5)
        ledger.export_csv(tmp_path / "out.csv")
        ledger.export_json(tmp_path / "out.json")
        spent = ledger.spent()
    with open(tmp_path / "out.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["description"] for r in rows] == ["local, 2 epochs", 'quote " and, comma']
    assert rows[0]["key"] == "k1" and rows[1]["key"] == ""
    assert float(rows[1]["epsilon_after"]) == spent
    assert set(rows[0]) == {"id", "time", "description", "noise_multiplier", "sample_rate", "steps", "key", "epsilon_after"}
    document = json.loads((tmp_path / "out.json").read_text())
    assert document["accountant"] == "prv" and document["delta"] == 1e-5 and document["max_epsilon"] == 8.0
    assert document["epsilon_spent"] == spent
    assert [c["steps"] for c in document["charges"]] == [100, 5]


def test_corrupt_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match="junk.sqlite is not a readable privacy ledger"):
        PrivacyLedger(junk)
    foreign = tmp_path / "other.sqlite"
    with sqlite3.connect(foreign) as raw:
        raw.execute("CREATE TABLE patients (name TEXT)")
    with pytest.raises(LedgerError, match="not a Dopamine privacy ledger"):
        PrivacyLedger(foreign)
    newer = tmp_path / "newer.sqlite"
    PrivacyLedger(newer).close()
    with sqlite3.connect(newer) as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(LedgerError, match="newer Dopamine"):
        PrivacyLedger(newer)


def test_ledger_uses_wal_and_full_sync(tmp_path):
    with PrivacyLedger(tmp_path / "l.sqlite") as ledger:
        assert ledger._connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert ledger._connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_ledger_command_show_export_and_set_cap(tmp_path, capsys):
    from core.audit import read_audit_log
    from core.cli import main

    home = tmp_path / "home"
    assert main(["ledger", "show", "--home", str(home)]) == 0
    assert "No privacy ledger yet" in capsys.readouterr().out
    assert not home.exists()  # looking creates nothing
    assert main(["ledger", "export", "--home", str(home), "--json", str(tmp_path / "x.json")]) == 1
    assert "No privacy ledger" in capsys.readouterr().err

    assert main(["ledger", "set-cap", "4", "--delta", "1e-5", "--accountant", "prv", "--home", str(home)]) == 0
    with PrivacyLedger(home / "privacy-ledger.sqlite") as ledger:
        charge(ledger, description="a local run")
    assert main(["ledger", "show", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "(cap 4) at delta = 1e-05, PRV accountant" in out and "a local run" in out
    assert main(["ledger", "set-cap", "none", "--home", str(home)]) == 0
    assert "No cap" in capsys.readouterr().out
    assert main(["ledger", "set-cap", "none", "--home", str(home)]) == 0  # no change: nothing to record
    assert "Nothing changed" in capsys.readouterr().out
    assert main(["ledger", "export", "--home", str(home), "--json", str(tmp_path / "l.json")]) == 0
    document = json.loads((tmp_path / "l.json").read_text())
    assert document["max_epsilon"] is None and document["accountant"] == "prv" and len(document["charges"]) == 1
    assert [e.what.split(" (")[0] for e in read_audit_log(home / "audit.jsonl")] == [
        "privacy cap none -> 4; delta unset -> 1e-05; accountant rdp -> prv", "privacy cap 4 -> none"]
    with pytest.raises(SystemExit):
        main(["ledger", "set-cap", "-1", "--home", str(home)])
