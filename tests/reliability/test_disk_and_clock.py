"""Disk and clock (issue 13): a full disk or a read-only folder while training, joining and publishing gives a
clear one-line error and tears nothing; a hospital whose clock is off is told by how much and to fix it.

Full and read-only disks are real: a small tmpfs mounted for the test (``mount -t tmpfs -o size=...``), filled
up, or remounted read-only (chmod does not stop root). Where mounting is not allowed (not root, no
CAP_SYS_ADMIN) those tests are skipped; the short write of a full disk is also simulated in-process.
What "nothing torn" means here: every SQLite file passes its integrity check, no temporary file is left,
every model package verifies, the audit log verifies and ends with a whole entry.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from core.errors import AuditLogError, ClockSkew, LedgerError, RequestFailure, StorageError

ROOT = Path(__file__).resolve().parents[2]


# ---- a small disk of our own ----------------------------------------------------------------------

def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@contextmanager
def small_disk(path: Path, size_kb: int = 1024):
    """A tmpfs of ``size_kb`` at ``path`` (skips the test where mounting is not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = _mount("-t", "tmpfs", "-o", f"size={size_kb}k,mode=0755", "tmpfs", str(path))
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def read_only(path: Path) -> None:
    result = _mount("-o", "remount,ro", str(path))
    assert result.returncode == 0, result.stderr
    with pytest.raises(OSError) as refused:  # the fault is real: root cannot write there either
        (path / "probe").write_bytes(b"x")
    assert refused.value.errno == errno.EROFS


def writable(path: Path) -> None:
    result = _mount("-o", "remount,rw", str(path))
    assert result.returncode == 0, result.stderr


def fill(path: Path, leave: int = 0) -> Path:
    """Fill the disk holding ``path`` (a filler file), then give back ``leave`` bytes."""
    filler = path / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    if leave:
        os.truncate(filler, max(0, filler.stat().st_size - leave))
    with pytest.raises(OSError) as full:  # the fault is real
        with open(path / "probe", "wb", buffering=0) as handle:
            while True:
                handle.write(b"\0" * 65536)
    (path / "probe").unlink(missing_ok=True)
    assert full.value.errno == errno.ENOSPC
    return filler


def no_temporary_files(*places: Path) -> list[Path]:
    return [p for place in places for p in Path(place).rglob("*")
            if p.is_file() and (p.name.endswith(".tmp") or p.name.endswith("-journal"))]


def integrity(path: Path) -> list:
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return connection.execute("PRAGMA integrity_check").fetchall()
    finally:
        connection.close()


# ---- the messages -----------------------------------------------------------------------------------

def test_storage_errors_are_one_line_and_only_for_disk_problems():
    from core.config import storage_error

    full = storage_error(OSError(errno.ENOSPC, "No space left on device"), "/data/home")
    assert isinstance(full, StorageError) and "disk is full" in str(full) and "/data/home" in str(full)
    read_only_fs = storage_error(OSError(errno.EROFS, "Read-only file system", "/mnt/x/ledger.sqlite"))
    assert "read-only" in str(read_only_fs) and "/mnt/x/ledger.sqlite" in str(read_only_fs)
    assert "permission denied" in str(storage_error(PermissionError(errno.EACCES, "Permission denied", "/x")))
    for error in (full, read_only_fs):
        assert "\n" not in str(error)
    assert storage_error(ConnectionRefusedError(errno.ECONNREFUSED, "refused")) is None
    assert storage_error(FileNotFoundError(errno.ENOENT, "missing", "/x")) is None


def test_the_cli_prints_one_line_for_a_disk_error_raised_anywhere(monkeypatch, capsys):
    from core import cli

    def broken(args):
        raise OSError(errno.ENOSPC, "No space left on device", "/home/h/runs/x.log")

    class Parser:
        def parse_args(self, argv):
            return argparse.Namespace(func=broken)

    monkeypatch.setattr(cli, "build_parser", lambda extra=None: Parser())
    assert cli.main([]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: The disk is full"), err


# ---- the ledger -------------------------------------------------------------------------------------

def test_a_charge_on_a_full_disk_is_refused_whole(tmp_path):
    """SQLite runs out of room in the middle of a charge: LedgerError, nothing charged, the file intact."""
    from core.privacy.ledger import PrivacyLedger

    with small_disk(tmp_path / "disk", 512) as disk:
        ledger = PrivacyLedger(disk / "ledger.sqlite", max_epsilon=100.0, delta=1e-5)
        try:
            ledger.charge(noise_multiplier=1.0, sample_rate=0.01, steps=10, description="before", key="k1")
            spent, keys = ledger.spent(), ledger.keys()
            fill(disk)
            with pytest.raises(LedgerError) as refused:
                # a long description needs new pages: the write fails for want of space
                ledger.charge(noise_multiplier=1.0, sample_rate=0.01, steps=10, description="x" * 200_000, key="k2")
            assert "full" in str(refused.value) and "nothing was charged" in str(refused.value)
            assert isinstance(refused.value.__cause__, sqlite3.Error)
            assert ledger.spent() == spent and ledger.keys() == keys
            (disk / "filler").unlink()
            ledger.charge(noise_multiplier=1.0, sample_rate=0.01, steps=10, description="after", key="k2")
            assert ledger.keys() == {"k1", "k2"}  # the ledger goes on once there is room again
        finally:
            ledger.close()
        assert integrity(disk / "ledger.sqlite") == [("ok",)]
        assert not no_temporary_files(disk)


def test_a_ledger_that_cannot_be_written_refuses_the_charge_whole(tmp_path):
    """Read-only in the middle of a charge (SQLite told so: a mounted disk cannot be remounted read-only
    while the ledger is open), then a ledger on a read-only disk: LedgerError with what to do."""
    from core.privacy.ledger import PrivacyLedger

    with small_disk(tmp_path / "disk", 1024) as disk:
        ledger = PrivacyLedger(disk / "ledger.sqlite", max_epsilon=100.0, delta=1e-5)
        try:
            ledger.charge(noise_multiplier=1.0, sample_rate=0.01, steps=10, description="before", key="k1")
            ledger._connection.execute("PRAGMA query_only=1")
            with pytest.raises(LedgerError) as refused:
                ledger.charge(noise_multiplier=1.0, sample_rate=0.01, steps=10, description="ro", key="k2")
            message = str(refused.value)
            del refused  # its traceback holds a cursor, which would keep the file open past close()
            assert "readonly" in message
            assert ledger.keys() == {"k1"}
        finally:
            ledger.close()
        read_only(disk)
        # opening it on the read-only disk says what is wrong, not "restore it from a backup"
        with pytest.raises(LedgerError) as reopened:
            PrivacyLedger(disk / "ledger.sqlite")
        assert "backup" not in str(reopened.value) and "writable" in str(reopened.value), reopened.value
        writable(disk)
        assert integrity(disk / "ledger.sqlite") == [("ok",)]
        with PrivacyLedger(disk / "ledger.sqlite") as ledger:
            assert ledger.keys() == {"k1"}


# ---- the audit log ----------------------------------------------------------------------------------

def test_a_short_write_to_the_audit_log_leaves_no_torn_entry(tmp_path, monkeypatch):
    """A full disk takes half a line: the append fails (nothing is sent) and the log ends at a whole entry."""
    from core import audit
    from core.audit import AuditLog, read_audit_log, verify_audit_log
    from core.signing import generate_private_key, public_key_bytes

    key = generate_private_key()
    log = AuditLog(tmp_path / "audit.jsonl", key=key)
    log.append(what="first", payload=b"a" * 10)
    before = (tmp_path / "audit.jsonl").read_bytes()
    real_write, short = os.write, []

    def half_write(fd, data):
        short.append(len(data))
        return real_write(fd, data[: len(data) // 2])  # what write(2) returns when the disk fills mid-line

    monkeypatch.setattr(audit.os, "write", half_write)
    with pytest.raises(AuditLogError) as refused:
        log.append(what="second", payload=b"b" * 10)
    monkeypatch.setattr(audit.os, "write", real_write)
    assert short, "the short write never happened"
    assert "nothing was sent" in str(refused.value)
    assert (tmp_path / "audit.jsonl").read_bytes() == before  # no half entry left
    log.append(what="third", payload=b"c" * 10)
    report = verify_audit_log(tmp_path / "audit.jsonl", public_key=public_key_bytes(key))
    assert report.ok and [e.what for e in read_audit_log(tmp_path / "audit.jsonl")] == ["first", "third"]


def test_the_audit_log_on_a_full_disk(tmp_path):
    from core.audit import AuditLog, verify_audit_log
    from core.signing import generate_private_key, public_key_bytes

    key = generate_private_key()
    with small_disk(tmp_path / "disk", 256) as disk:
        log = AuditLog(disk / "audit.jsonl", key=key)
        log.append(what="first", payload=b"a")
        fill(disk, leave=100)  # room for part of an entry, not all of it
        with pytest.raises(AuditLogError):
            for _ in range(50):
                log.append(what="more " * 20, payload=b"b")
        report = verify_audit_log(disk / "audit.jsonl", public_key=public_key_bytes(key))
        assert report.ok, report
        assert (disk / "audit.jsonl").read_bytes().endswith(b"\n")


# ---- model packages ----------------------------------------------------------------------------------

def _package(path: Path, key, scale: float = 1.0) -> str:
    import torch

    from core.models.package import ModelCard, write_package
    from core.models.registry import build_model

    torch.manual_seed(0)
    model = build_model("small_cnn", 5)
    state = {k: v * scale for k, v in model.state_dict().items()}
    card = ModelCard(architecture="small_cnn", classes=["0", "1", "2", "3", "4"], preprocessing={"size": 32},
                     mode="c", epsilon=None, delta=None, accountant=None, noise_multiplier=None, sample_rate=None,
                     max_grad_norm=None, steps=1, rounds=None, hospitals=1, image_counts={"local": 1}, metrics={},
                     created="2026-01-01T00:00:00+00:00", software_version="test", description="test")
    return write_package(path, state, card, key)


def test_a_model_written_on_a_full_disk_keeps_the_old_one(tmp_path):
    from core.models.package import read_package
    from core.signing import generate_private_key, public_key_bytes

    key = generate_private_key()
    with small_disk(tmp_path / "disk", 1024) as disk:
        _package(disk / "model.dpm", key)
        old = (disk / "model.dpm").read_bytes()
        fill(disk, leave=4096)
        with pytest.raises(OSError) as full:
            _package(disk / "model.dpm", key, scale=2.0)
        assert full.value.errno == errno.ENOSPC
        assert (disk / "model.dpm").read_bytes() == old
        read_package(disk / "model.dpm", require_signature=True, trusted_keys=[public_key_bytes(key)])
        assert not no_temporary_files(disk)


# ---- the clock ---------------------------------------------------------------------------------------

def test_the_coordinator_accepts_a_clock_within_the_window_and_refuses_one_outside(tmp_path):
    from coordinator_kit import LiveFederation

    from core.federation.auth import TIMESTAMP_WINDOW_S

    federation = LiveFederation(tmp_path).start()
    try:
        first, second = federation.hospitals[:2]
        inside = federation.request("POST", "/v1/enroll", first.enrollment(), hospital=first,
                                    headers={"Content-Type": "application/json"},
                                    now=time.time() + TIMESTAMP_WINDOW_S - 60)
        assert inside.status_code == 200, inside.text
        for skew in (TIMESTAMP_WINDOW_S + 100, -(TIMESTAMP_WINDOW_S + 100)):
            outside = federation.request("POST", "/v1/enroll", second.enrollment(), hospital=second,
                                         headers={"Content-Type": "application/json"}, now=time.time() + skew)
            assert outside.status_code == 401 and outside.json()["code"] == "clock", outside.text
            assert ("ahead of" if skew > 0 else "behind") in outside.json()["detail"]
        # a signed route too (the hospital enrolled above)
        late = federation.request("GET", "/v1/state", hospital=first, now=time.time() - TIMESTAMP_WINDOW_S - 5)
        assert late.status_code == 401 and late.json()["code"] == "clock"
    finally:
        federation.stop()


def test_a_hospital_whose_clock_is_off_is_told_by_how_much(tmp_path, https_server, monkeypatch):
    """Over real HTTPS: the hospital's client turns the coordinator's 401 into one line with its offset."""
    import types

    from coordinator_kit import LiveFederation

    from core.federation import auth, transport
    from core.federation.session import CoordinatorSession

    federation = LiveFederation(tmp_path).start()
    try:
        with federation.serve(https_server):
            invitation, hospital = federation.invitations[0], federation.hospitals[0]
            real = time.time
            for skew, way in ((1000.0, "ahead of"), (-1000.0, "behind")):
                clock = types.SimpleNamespace(time=lambda s=skew: real() + s, monotonic=time.monotonic)
                monkeypatch.setattr(transport, "time", clock)  # only the hospital's clock is off
                monkeypatch.setattr(transport, "sign_request",
                                    lambda key, s=skew, **kw: auth.sign_request(key, now=real() + s, **kw))
                session = CoordinatorSession(invitation, federation.ca_file, hospital.key, give_up_after_s=5)
                try:
                    with pytest.raises(ClockSkew) as refused:
                        session.enroll(hospital.public_key, 24)
                finally:
                    session.close()
                message = str(refused.value)
                assert isinstance(refused.value, RequestFailure) and refused.value.status == 401
                # The reported offset is the skew we set (the Date header has whole seconds; not a speed bound).
                assert refused.value.offset_s is not None and abs(refused.value.offset_s - skew) < 5
                assert abs(float(message.split("off by about ")[1].split(" s")[0]) - abs(skew)) <= 5, message
                assert way in message and "fix this computer's date and time" in message and "\n" not in message
            monkeypatch.undo()
            session = CoordinatorSession(invitation, federation.ca_file, hospital.key, give_up_after_s=5)
            try:  # the same hospital with its clock right enrolls
                assert session.enroll(hospital.public_key, 24)["hospital_id"] == invitation.hospital_id
            finally:
                session.close()
    finally:
        federation.stop()


def test_the_offset_is_read_from_the_date_header():
    import requests

    from core.federation.transport import clock_offset

    response = requests.Response()
    response.headers["Date"] = "Wed, 02 Dec 2026 18:00:00 GMT"
    theirs = 1796234400.0  # that date
    assert clock_offset(response, now=theirs + 420) == pytest.approx(420)
    assert clock_offset(response, now=theirs - 420) == pytest.approx(-420)
    response.headers["Date"] = "not a date"
    assert clock_offset(response) is None
    del response.headers["Date"]
    assert clock_offset(response) is None
    unknown = ClockSkew(None, "The request's time is 400 s behind the coordinator's clock")
    assert "more than 300 s" in str(unknown) and "fix this computer's date and time" in str(unknown)


# ---- whole commands, as a hospital runs them (processes) ---------------------------------------------

def _cli(args: list[str], *, timeout: float = 120, env: dict | None = None,
         prelude: str = "") -> subprocess.CompletedProcess:
    code = prelude + "import sys; from core.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from core.data.synthetic import write_demo_data

    root = tmp_path_factory.mktemp("disk-data")
    write_demo_data(root, hospitals=1, per_hospital=30, test_images=0, size=32, seed=2)
    return root / "hospital_01"


FULL_WORDS = ("disk is full", "No space left", "database or disk is full")
TRAIN = ["--mode", "cdp", "--model", "small_cnn", "--image-size", "16", "--epochs", "1", "--batch-size", "8",
         "--noise-multiplier", "1.0", "--delta", "1e-3", "--max-epsilon", "50", "--threads", "1"]


@pytest.mark.slow
def test_training_with_a_full_home_or_a_read_only_output(tmp_path, images):
    from core.home import HospitalHome
    from core.privacy.ledger import PrivacyLedger

    with small_disk(tmp_path / "disk", 2048) as disk:
        home = disk / "home"
        # a home on a full disk: refused in one line, the ledger (if any) whole
        fill(disk)
        full = _one_error_line(_cli(["train", images, *TRAIN, "--out", tmp_path / "m.dpm", "--home", home]))
        assert any(words in full for words in FULL_WORDS), full
        assert not (tmp_path / "m.dpm").exists()
        (disk / "filler").unlink()
        # the output folder read-only: training cannot write its model; nothing half-written anywhere
        out = tmp_path / "out"
        with small_disk(out, 256):
            read_only(out)
            refused = _one_error_line(_cli(["train", images, *TRAIN, "--out", out / "m.dpm",
                                            "--home", tmp_path / "home2"]))
            assert "read-only" in refused.lower() and str(out) in refused, refused
            print(json.dumps({"train_full": full, "train_read_only_out": refused}))
            assert not list(out.iterdir())
        ledger_path = HospitalHome.at(tmp_path / "home2").ledger
        if ledger_path.exists():  # refused before any privacy was spent on a model that could not be saved
            assert integrity(ledger_path) == [("ok",)]
            with PrivacyLedger(ledger_path) as ledger:
                assert ledger.entries() == []
        assert not no_temporary_files(disk, tmp_path / "home2")


@pytest.mark.slow
def test_joining_with_a_full_or_read_only_home(tmp_path, images):
    from coordinator_kit import LiveFederation

    federation = LiveFederation(tmp_path / "fed", image_size=16)  # not serving: the home fails first
    invitation = sorted(federation.init.invitations)[0]
    with small_disk(tmp_path / "disk", 1024) as disk:
        fill(disk)
        full = _one_error_line(_cli(["join", invitation, "--data", images, "--home", disk / "home",
                                     "--max-epsilon", "10", "--accept-roster", "any"]))
        assert any(words in full for words in FULL_WORDS), full
        (disk / "filler").unlink()
        read_only(disk)
        ro = _one_error_line(_cli(["join", invitation, "--data", images, "--home", disk / "home",
                                   "--max-epsilon", "10", "--accept-roster", "any"]))
        assert "read-only" in ro.lower(), ro
        assert not no_temporary_files(disk)
        print(json.dumps({"join_full": full, "join_read_only": ro}))


@pytest.mark.slow
def test_a_hospital_that_joins_with_its_clock_off_is_told_to_fix_it(tmp_path, images):
    """``dopamine join`` on a computer whose clock is 1000 s ahead: one line that says by how much."""
    from coordinator_kit import LiveFederation

    federation = LiveFederation(tmp_path / "fed", image_size=16)
    invitation = sorted(federation.init.invitations)[0]
    with federation.serve_process():
        skewed = "import time; _real = time.time; time.time = lambda: _real() + 1000.0\n"
        line = _one_error_line(_cli(["join", invitation, "--data", images, "--home", tmp_path / "home",
                                     "--max-epsilon", "10", "--accept-roster", "any"], prelude=skewed))
    assert "clock is off by about" in line and "ahead of the coordinator's" in line, line
    seconds = float(line.split("off by about ")[1].split(" s")[0])
    assert 990 <= seconds <= 1010, line  # the 1000 s we set, to the Date header's whole seconds (not a speed bound)
    assert "fix this computer's date and time" in line
    print(json.dumps({"hospital_prints": line}))


@pytest.mark.slow
def test_the_coordinator_publishing_on_a_full_disk_says_so_waits_and_goes_on(tmp_path):
    """Round 1's model cannot be written (its folder's disk is full): one log line, no round released, no
    temporary file; once there is room the round is published and the federation finishes whole."""
    import shutil
    import threading

    from crash_kit import CellResult, LogWatcher, ProcessFederation, check_invariants

    from core.data.synthetic import write_demo_data
    from core.federation.status import read_status

    data = tmp_path / "data"
    write_demo_data(data, hospitals=3, per_hospital=16, test_images=0, size=40, seed=4)
    federation = ProcessFederation(tmp_path / "run", data, hospitals=3, rounds=2, eval_data=None)
    models = federation.paths.models
    saved = tmp_path / "models-before"
    shutil.copytree(models, saved)
    refused: list[str] = []
    seen = threading.Event()

    def on_line(line: str) -> None:
        if "Could not write round" in line:
            refused.append(line)
            seen.set()

    with small_disk(models, 4096):
        for path in saved.iterdir():
            shutil.copy2(path, models / path.name)
        watcher = LogWatcher(federation.paths.log, on_line).start()
        try:
            federation.start_coordinator()  # publishes round 0's model while there is room
            filler = fill(models, leave=1024)
            for hospital in federation.hospitals:
                hospital.start()
            assert seen.wait(180), "the coordinator never said it could not write the model\n" + federation.logs()
            assert read_status(federation.paths.root)["rounds_finished"] == 0  # nothing released without a model
            assert not no_temporary_files(models), "a half-written model was left"
            filler.unlink()
            federation.wait(time.monotonic() + 180)
        finally:
            watcher.stop()
            federation.close()
        log = federation.paths.log.read_text()
        result = CellResult("publishing the model", "a full disk")
        check_invariants(federation, result)
    assert not result.violations, "\n".join(result.violations) + "\n" + federation.logs()
    assert result.outcome == "finished" and [r["round"] for r in result.rounds] == [1, 2]
    assert "disk" in refused[0] or "No space" in refused[0], refused[0]
    assert "Traceback" not in log, "the coordinator logged a traceback, not one line"
