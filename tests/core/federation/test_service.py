"""The coordinator as a background service: pause held by the round machine, graceful SIGTERM, log
rotation, finding a running coordinator again, backups taken while it serves and restores that refuse
to go back."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from core.errors import FederationError
from core.federation.layout import CoordinatorSettings, FederationPaths, InitConfig, init_federation
from core.federation.plan import FederationPlan
from core.federation.protocol import Step
from core.federation.round_machine import CloseStep, Observation, RoundMachine
from core.federation.round_state import RoundState
from core.federation.simulate import child_env, free_port


def _federation(tmp_path: Path, **extra) -> Path:
    return init_federation(InitConfig(folder=tmp_path / "fed", name="service test", mode="fscdp", rounds=3,
                                      hospitals=2, hosts=["127.0.0.1", "localhost"], port=free_port(),
                                      image_size=32, **extra)).folder


# ---- pause: the round machine holds the next attempt at its first step ------------------------------------

def _machine_and_state(phase: Step) -> tuple[RoundMachine, RoundState]:
    plan = FederationPlan(name="x", federation_id="f" * 16, mode="fscdp", rounds=3, hospitals=2, threshold=2,
                          colluders=1, sample_rate=0.1, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5,
                          secagg=True)
    settings = CoordinatorSettings(url="https://x:1", hosts=["x"], port=1)
    state = RoundState(status="running", round=2, attempt=1, phase=phase.value, phase_deadline=100.0,
                       expected=["h01", "h02"], model_round=1)
    return RoundMachine(plan, settings), state


def _seen(now: float, *, held: bool, submitted: frozenset) -> Observation:
    hospitals = frozenset({"h01", "h02"})
    return Observation(now=now, serving_since=0.0, enrolled=2, active=hospitals, gone=frozenset(),
                       expected=hospitals, submitted=submitted, left=frozenset(), roster_signed=True, held=held)


def test_a_paused_federation_holds_the_next_round_at_its_first_step_and_lets_the_open_one_finish():
    machine, state = _machine_and_state(Step.ADVERTISE)
    everyone = frozenset({"h01", "h02"})
    # Paused: every round key is in and the clock ran out long ago, yet the step stays open.
    assert machine.next_action(state, _seen(1000.0, held=True, submitted=everyone)) is None
    assert machine.next_action(state, _seen(1000.0, held=False, submitted=everyone)) == CloseStep(Step.ADVERTISE)
    # A round past its first step (something may already be charged and sent) is never held.
    machine, state = _machine_and_state(Step.MASK)
    assert machine.next_action(state, _seen(50.0, held=True, submitted=everyone)) == CloseStep(Step.MASK)


# ---- the serving process --------------------------------------------------------------------------------

def _serve(folder: Path) -> subprocess.Popen:
    from core.federation.service import CoordinatorService

    process = subprocess.Popen([sys.executable, "-m", "core.cli", "coordinator", "serve", str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(1))
    service = CoordinatorService(folder)
    deadline = time.monotonic() + 90
    while not (service.state().running and service.health()):
        assert process.poll() is None, process.stdout.read().decode()
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the coordinator did not start")
        time.sleep(0.1)
    return process


@pytest.mark.slow
def test_sigterm_stops_the_coordinator_gracefully(tmp_path):
    folder = _federation(tmp_path)
    paths = FederationPaths(folder)
    process = _serve(folder)
    try:
        record = json.loads(paths.service_record.read_text())
        assert record["pid"] == process.pid and record["port"] > 0
        live = json.loads(paths.live.read_text())
        assert live["serving"] and live["hospitals"] == {}  # nobody enrolled yet
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0  # uvicorn re-raises SIGTERM; it must not kill the process mid-stop
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    log = paths.log.read_text()
    assert "coordinator stopped (SIGTERM)" in log
    assert not paths.service_record.exists()  # nobody will mistake a stale pid for a coordinator
    assert json.loads(paths.live.read_text())["serving"] is False


@pytest.mark.slow
def test_the_app_finds_a_running_coordinator_again_and_stops_it(tmp_path):
    from core.federation import service as service_module
    from core.federation.service import CoordinatorService, host_status

    folder = _federation(tmp_path)
    started = CoordinatorService(folder).start()
    assert started.running and started.started_here
    try:
        with pytest.raises(FederationError, match="already running"):
            CoordinatorService(folder).start()
        # The window closed and a new app opened: it has no handle on the process, only the folder.
        child = service_module._children.pop(started.pid)
        again = CoordinatorService(folder)
        state = again.state()
        assert state.running and state.pid == started.pid and not state.started_here and again.health()
        status = host_status(folder)
        assert status.running and status.healthy and status.status == "enrolling"
        assert [h.status for h in status.hospitals] == ["invited", "invited"]
        assert again.stop() and not again.state().running
        assert child.wait(timeout=30) == 0
    finally:
        CoordinatorService(folder).stop()
    assert not CoordinatorService(folder).stop()  # nothing left to stop


def test_a_busy_port_is_named_before_starting(tmp_path):
    from core.federation.service import CoordinatorService, port_problem

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert "in use" in port_problem("127.0.0.1", port)
        folder = init_federation(InitConfig(folder=tmp_path / "fed", name="busy", mode="f", rounds=1, hospitals=2,
                                            hosts=["127.0.0.1"], port=port)).folder
        with pytest.raises(FederationError, match="in use"):
            CoordinatorService(folder).start()
    assert port_problem("127.0.0.1", port) == ""


def test_the_log_rotates_by_size(tmp_path):
    from core.federation.server import _file_logging

    handler = _file_logging(tmp_path / "coordinator.log", max_bytes=2048, backups=2)
    try:
        logger = logging.getLogger("dopamine.coordinator")
        for i in range(200):
            logger.info("round %d done with h01, h02 and h03 (a line of about eighty characters)", i)
    finally:
        logging.getLogger("dopamine").removeHandler(handler)
        handler.close()
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["coordinator.log", "coordinator.log.1", "coordinator.log.2"]
    assert all(p.stat().st_size <= 2048 for p in tmp_path.iterdir())
    assert "round 199 done" in (tmp_path / "coordinator.log").read_text()


# ---- backup and restore ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_backup_taken_while_serving_restores_to_a_coordinator_that_serves(tmp_path):
    from core.federation.backup import backup, read_backup, restore
    from core.federation.service import CoordinatorService

    folder = _federation(tmp_path)
    service = CoordinatorService(folder)
    service.start()
    try:
        info = backup(folder, tmp_path / "backups" / "fed.tar.gz")  # while it serves
        with pytest.raises(FederationError, match="running; stop it"):
            restore(info.path, folder)
    finally:
        service.stop()
    assert oct(info.path.stat().st_mode & 0o777) == "0o600"  # it holds the CA and signing keys
    assert (info.federation_id, info.model_round, info.status) == (read_backup(info.path)[0].federation_id, 0,
                                                                    "enrolling")
    with tarfile.open(info.path) as archive:
        names = set(archive.getnames())
    assert {"manifest.json", "state.sqlite", "signing.key", "tls/ca.key", "models/global-r0000.dpm"} <= names
    assert not any(name.startswith("invitations") for name in names)  # one-time tokens stay out

    restored, moved = restore(info.path, tmp_path / "elsewhere" / "fed")
    assert moved is None and restored.federation_id == info.federation_id
    copy = CoordinatorService(tmp_path / "elsewhere" / "fed")
    copy.start()
    try:
        assert copy.health()
    finally:
        copy.stop()


def test_a_damaged_or_foreign_backup_is_refused(tmp_path):
    from core.federation.backup import backup, restore

    folder = _federation(tmp_path)
    info = backup(folder, tmp_path / "fed.tar.gz")
    edited = tmp_path / "edited.tar.gz"
    with tarfile.open(info.path) as source, tarfile.open(edited, "w:gz") as target:
        for member in source.getmembers():
            data = source.extractfile(member).read()
            if member.name == "plan.toml":
                data = data.replace(b"rounds = 3", b"rounds = 30")
                member.size = len(data)
            import io

            target.addfile(member, io.BytesIO(data))
    with pytest.raises(FederationError, match="plan.toml .* damaged"):
        restore(edited, tmp_path / "new")
    assert not (tmp_path / "new").exists()

    other = init_federation(InitConfig(folder=tmp_path / "other", name="other", mode="f", rounds=1, hospitals=2,
                                       hosts=["127.0.0.1"], port=8443)).folder
    with pytest.raises(FederationError, match="another federation"):
        restore(info.path, other)
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really")
    with pytest.raises(FederationError, match="not a usable Dopamine coordinator backup"):
        restore(tmp_path / "junk.tar.gz", tmp_path / "new")


def test_backup_restore_pause_and_resume_from_the_command_line(tmp_path, capsys):
    from core.cli import main
    from core.federation.store import CoordinatorStore

    folder = _federation(tmp_path)
    assert main(["coordinator", "pause", str(folder)]) == 0 and (folder / "hold").exists()
    assert main(["coordinator", "resume", str(folder)]) == 0 and not (folder / "hold").exists()
    capsys.readouterr()
    assert main(["coordinator", "backup", str(folder), str(tmp_path / "b.tar.gz"), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["model_round"] == 0 and made["status"] == "enrolling" and Path(made["path"]).exists()
    assert main(["coordinator", "restore", made["path"], str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / "plan.toml").read_text() == (folder / "plan.toml").read_text()
    store = CoordinatorStore(folder / "state.sqlite")
    try:
        store.update_meta({"status": "running", "model_round": 1, "round": 2, "attempt": 1})
    finally:
        store.close()
    capsys.readouterr()
    assert main(["coordinator", "restore", made["path"], str(folder)]) == 1
    assert "error: " in capsys.readouterr().err
    assert main(["coordinator", "status", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "Coordinator process: not running" in out and "h01 hospital-01: invited, offline" in out
