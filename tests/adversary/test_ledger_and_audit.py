"""Attacks on the hospital's own records, played against the real code (issue #10, points 5, 6 and 9).

- A coordinator reopens a round attempt the hospital already computed: the ledger refuses the key.
- Someone who can write the audit log (but lacks the hospital's key) edits an entry and rebuilds the
  hash chain: the signatures give it away.
- A ledger restored from an older backup, behind its audit log, would forget spent epsilon and let old
  releases run again: refused before any work.
- `dopamine train --max-epsilon` above the cap used to raise the cap silently; `--target-epsilon`
  calibrated sigma at a delta other than the ledger's; `dopamine train` kept its own ledger.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from core.audit import AuditLog, check_ledger_not_behind, read_audit_log, verify_audit_log
from core.cli import main
from core.errors import LedgerError, ReleaseRefused
from core.home import HospitalHome
from core.privacy.ledger import PrivacyLedger
from core.signing import public_key_bytes

STEP = dict(noise_multiplier=1.0, sample_rate=0.05, steps=1)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from core.data.synthetic import write_demo_data

    out = tmp_path_factory.mktemp("demo")
    write_demo_data(out, hospitals=1, per_hospital=40, test_images=0, size=32, seed=5)
    return out / "hospital_01"


def _release(home: HospitalHome, ledger: PrivacyLedger, key: str) -> None:
    """What a hospital does for one round attempt: charge first, then log the bytes, then send."""
    ledger.charge(**STEP, description=f"federated round {key}", key=key)
    AuditLog(home.audit_log, key=home.identity()).append(
        what="masked noised update", payload=hashlib.sha256(key.encode()).digest() * 100, federation="fed",
        round=int(key.split(":")[2]), phase="mask", destination="POST /v1/rounds/mask", ledger_key=key)


def test_a_reopened_round_attempt_is_refused_not_recomputed(tmp_path):
    home = HospitalHome(tmp_path / "home").ensure()
    with PrivacyLedger(home.ledger, max_epsilon=10.0, delta=1e-5) as ledger:
        _release(home, ledger, "fed:plan-abc:7:0")
        spent = ledger.spent()
        # A coordinator restored from its backup opens (round 7, attempt 0) again.
        with pytest.raises(ReleaseRefused, match="already charged and run once"):
            ledger.charge(**STEP, description="federated round 7 again", key="fed:plan-abc:7:0")
        assert ledger.spent() == spent and len(ledger.entries()) == 1
        assert ledger.has_charge("fed:plan-abc:7:0")


def _rechain(lines: list[str], *, resign_with=None) -> list[str]:
    """The forger's tool: recompute every hash (and, with a key, every signature) after an edit."""
    from core.audit import GENESIS_HASH, _entry_hash, _signed_message

    prev = GENESIS_HASH
    out = []
    for line in lines:
        entry = json.loads(line)
        entry["prev"] = prev
        entry["hash"] = _entry_hash(entry)
        if resign_with is not None:
            entry["signature"] = resign_with.sign(_signed_message(entry["hash"])).hex()
        prev = entry["hash"]
        out.append(json.dumps(entry, sort_keys=True))
    return out


def test_an_edited_and_rechained_audit_log_fails_without_the_hospitals_key(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    home = HospitalHome(tmp_path / "home").ensure()
    public = public_key_bytes(home.identity())
    with PrivacyLedger(home.ledger, delta=1e-5) as ledger:
        for round_ in range(1, 5):
            _release(home, ledger, f"fed:plan-abc:{round_}:0")
    honest = verify_audit_log(home.audit_log, public)
    assert honest.ok and honest.entries == 4 and honest.signatures_checked

    # The forger hides how much left in round 2, then rebuilds the hash chain so it links again.
    lines = home.audit_log.read_text().splitlines()
    edited = json.loads(lines[1])
    edited["bytes"] = 12
    lines[1] = json.dumps(edited)
    forged = _rechain(lines)
    home.audit_log.write_text("\n".join(forged) + "\n")
    chain_only = verify_audit_log(home.audit_log)
    assert chain_only.ok and not chain_only.signatures_checked  # a bare hash chain is fooled ...
    result = verify_audit_log(home.audit_log, public)  # ... the hospital's key is not
    assert not result.ok and result.broken_at_line == 2 and "signature" in result.reason

    # Re-signing with the forger's own key does not help either.
    home.audit_log.write_text("\n".join(_rechain(lines, resign_with=Ed25519PrivateKey.generate())) + "\n")
    result = verify_audit_log(home.audit_log, public)
    assert not result.ok and result.broken_at_line == 1
    assert main(["audit", "verify", "--home", str(home.root)]) == 1


def test_a_ledger_restored_from_an_older_backup_is_refused(tmp_path, images, capsys):
    home = HospitalHome(tmp_path / "home").ensure()
    with PrivacyLedger(home.ledger, max_epsilon=50.0, delta=1e-3) as ledger:
        _release(home, ledger, "fed:plan-abc:1:0")
    backup = tmp_path / "backup.sqlite"
    shutil.copyfile(home.ledger, backup)
    with PrivacyLedger(home.ledger) as ledger:
        _release(home, ledger, "fed:plan-abc:2:0")
        _release(home, ledger, "fed:plan-abc:3:0")
        check_ledger_not_behind(ledger, home.audit_log)  # the live ledger is fine
    shutil.copyfile(backup, home.ledger)  # the IT department restores last week's backup

    with PrivacyLedger(home.ledger) as ledger:
        assert ledger.keys() == {"fed:plan-abc:1:0"}
        with pytest.raises(LedgerError, match="older backup") as info:
            check_ledger_not_behind(ledger, home.audit_log)
        assert "2 release(s)" in str(info.value) and "\n" not in str(info.value)
        # Had it been accepted, the restored ledger would run round 2 again as if it were new.
        assert not ledger.has_charge("fed:plan-abc:2:0")

    # `dopamine train` on that home refuses before any step, and charges nothing.
    code = main(["train", str(images), "--mode", "cdp", "--model", "small_cnn", "--epochs", "1",
                 "--batch-size", "8", "--noise-multiplier", "1.0", "--image-size", "32",
                 "--out", str(tmp_path / "m.dpm"), "--home", str(home.root)])
    assert code == 1 and "older backup" in capsys.readouterr().err
    assert not (tmp_path / "m.dpm").exists()
    with PrivacyLedger(home.ledger) as ledger:
        assert len(ledger.entries()) == 1
    # `dopamine ledger show` says so too.
    assert main(["ledger", "show", "--home", str(home.root)]) == 1
    assert "WARNING" in capsys.readouterr().out


def _train(images: Path, home: Path, out: Path, *extra: str) -> int:
    return main(["train", str(images), "--mode", "cdp", "--model", "small_cnn", "--epochs", "1",
                 "--batch-size", "8", "--image-size", "32", "--out", str(out), "--home", str(home),
                 "--json", *extra])


def test_two_cli_train_runs_with_one_home_spend_one_ledger(tmp_path, images, capsys):
    from core.privacy.accountant import compute_epsilon_history

    home = tmp_path / "home"
    assert _train(images, home, tmp_path / "a.dpm", "--noise-multiplier", "1.0", "--delta", "1e-3",
                  "--max-epsilon", "50") == 0
    first = json.loads(capsys.readouterr().out)
    assert _train(images, home, tmp_path / "b.dpm", "--noise-multiplier", "2.0") == 0
    second = json.loads(capsys.readouterr().out)
    assert first["ledger_path"] == second["ledger_path"] == str(home / "privacy-ledger.sqlite")
    assert second["delta"] == 1e-3  # the second run adopted the ledger's delta

    assert main(["ledger", "show", "--home", str(home), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["max_epsilon"] == 50.0 and shown["delta"] == 1e-3 and shown["accountant"] == "rdp"
    assert [c["noise_multiplier"] for c in shown["charges"]] == [1.0, 2.0]
    expected = compute_epsilon_history([(1.0, first["sample_rate"], first["steps"]),
                                        (2.0, second["sample_rate"], second["steps"])], delta=1e-3)
    assert shown["epsilon_spent"] == pytest.approx(expected) == pytest.approx(second["ledger_spent"])
    assert shown["behind_audit_log"] is None
    # The first run's --max-epsilon set the cap, on the record.
    entries = read_audit_log(home / "audit.jsonl")
    assert [e.kind for e in entries] == ["ledger"] and "none -> 50" in entries[0].what

    # Export works on the same ledger.
    assert main(["ledger", "export", "--home", str(home), "--csv", str(tmp_path / "l.csv")]) == 0
    assert (tmp_path / "l.csv").read_text().count("local DP-SGD run") == 2


def test_train_max_epsilon_above_the_cap_leaves_the_cap_unchanged(tmp_path, images, capsys):
    home = tmp_path / "home"
    assert main(["ledger", "set-cap", "5", "--delta", "1e-3", "--home", str(home)]) == 0
    assert "Cap set to epsilon = 5" in capsys.readouterr().out
    code = main(["train", str(images), "--mode", "cdp", "--model", "small_cnn", "--epochs", "1",
                 "--batch-size", "8", "--image-size", "32", "--noise-multiplier", "1.0",
                 "--out", str(tmp_path / "m.dpm"), "--home", str(home), "--max-epsilon", "1000"])
    assert code == 0
    assert "the cap stands" in capsys.readouterr().out
    with PrivacyLedger(home / "privacy-ledger.sqlite") as ledger:
        assert ledger.max_epsilon == 5.0 and len(ledger.entries()) == 1
        spent = ledger.spent()
    # Below what is left, --max-epsilon is a limit on this run: refused before any step, cap untouched.
    code = _train(images, home, tmp_path / "n.dpm", "--noise-multiplier", "1.0", "--max-epsilon", f"{spent * 1.01}")
    assert code == 1 and "--max-epsilon" in capsys.readouterr().err
    with PrivacyLedger(home / "privacy-ledger.sqlite") as ledger:
        assert ledger.max_epsilon == 5.0 and len(ledger.entries()) == 1
    entries = read_audit_log(home / "audit.jsonl")
    assert len(entries) == 1 and entries[0].kind == "ledger"  # only the explicit set-cap is on record


def test_target_epsilon_calibrates_at_the_ledgers_delta(tmp_path, images, capsys):
    from core.privacy.accountant import calibrate_noise_multiplier

    home = tmp_path / "home"
    assert main(["ledger", "set-cap", "50", "--delta", "1e-4", "--home", str(home)]) == 0
    capsys.readouterr()
    assert _train(images, home, tmp_path / "m.dpm", "--target-epsilon", "3") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["delta"] == 1e-4 and result["epsilon"] <= 3.0
    assert result["noise_multiplier"] == pytest.approx(calibrate_noise_multiplier(
        target_epsilon=3.0, sample_rate=result["sample_rate"], steps=result["steps"], delta=1e-4))
    from core.models.package import read_package

    assert read_package(tmp_path / "m.dpm").card.delta == 1e-4

    # Another delta for this run is refused, clearly, and nothing is charged.
    assert _train(images, home, tmp_path / "x.dpm", "--target-epsilon", "3", "--delta", "1e-3") == 1
    err = capsys.readouterr().err
    assert "delta=0.0001" in err and "ledger set-cap" in err
    # A ledger delta that is not below 1/N of this data is refused too.
    assert main(["ledger", "set-cap", "50", "--delta", "0.5", "--home", str(home)]) == 0
    capsys.readouterr()
    assert _train(images, home, tmp_path / "y.dpm", "--target-epsilon", "3") == 1
    assert "delta" in capsys.readouterr().err.lower()
    with PrivacyLedger(home / "privacy-ledger.sqlite") as ledger:
        assert len(ledger.entries()) == 1
