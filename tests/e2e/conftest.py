"""End-to-end harness: a real coordinator and real hospital clients as processes, over loopback HTTPS."""

import json
import time
from pathlib import Path

import pytest

from core.federation.layout import FederationPaths, InitConfig, init_federation
from core.federation.simulate import CoordinatorProcess, HospitalProcess, free_port
from core.home import HospitalHome

# Tiny and fast: 32 px images, small_cnn, a few rounds.
IMAGE_SIZE = 32
PER_HOSPITAL = 24


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    from core.data.synthetic import write_demo_data

    root = tmp_path_factory.mktemp("e2e-data")
    write_demo_data(root, hospitals=3, per_hospital=PER_HOSPITAL, test_images=30, size=40, seed=3)
    return root


class FederationRun:
    """One federation folder, its coordinator process and its hospital processes."""

    def __init__(self, root: Path, data: Path, *, mode: str, rounds: int, hospitals: int = 3,
                 max_epsilon: float | dict[int, float] = 1000.0, **plan):
        self.root = Path(root)
        self.data = Path(data)
        self.per_hospital = PER_HOSPITAL
        self.init = init_federation(InitConfig(
            folder=self.root / "federation", name=f"e2e {mode}", mode=mode, rounds=rounds, hospitals=hospitals,
            hosts=["127.0.0.1", "localhost"], port=free_port(), image_size=IMAGE_SIZE, eval_data=self.data / "test",
            compute_phase_timeout_s=60.0, key_phase_timeout_s=30.0, **plan,
        ))
        self.plan = self.init.plan
        self.paths = FederationPaths(self.root / "federation")
        self.coordinator = CoordinatorProcess(self.paths.root, self.root / "logs" / "coordinator.out")
        caps = max_epsilon if isinstance(max_epsilon, dict) else {}
        self.hospitals = [
            HospitalProcess(i, invitation, self.data / f"hospital_{i:02d}", self.root / "homes" / f"h{i:02d}",
                            self.root / "logs" / f"hospital_{i:02d}.err",
                            max_epsilon=caps.get(i, 1000.0) if caps else max_epsilon)
            for i, invitation in enumerate(sorted(self.init.invitations), start=1)
        ]

    def start(self, on_event=None) -> None:
        self.start_coordinator()
        for hospital in self.hospitals:
            hospital.on_event = on_event
            hospital.start()

    def start_coordinator(self) -> None:
        self.coordinator.start(url=self.init.coordinator_url, ca_file=self.paths.tls / "ca.pem")

    def wait(self, timeout_s: float = 150.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(h.running for h in self.hospitals) or self._pending():
            if time.monotonic() > deadline:
                raise AssertionError(f"federation did not finish in {timeout_s} s; logs: {self.logs()}")
            time.sleep(0.1)

    def _pending(self) -> bool:
        return any(getattr(h, "restart_pending", False) for h in self.hospitals)

    def close(self) -> None:
        for hospital in self.hospitals:
            hospital.kill()
        self.coordinator.stop()

    def logs(self) -> str:
        out = []
        for path in sorted((self.root / "logs").glob("*")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        log = self.paths.log
        if log.exists():
            out.append("--- coordinator.log\n" + "\n".join(log.read_text().splitlines()[-25:]))
        return "\n".join(out)

    def status(self) -> dict:
        from core.federation.status import read_status

        return read_status(self.paths.root, last_rounds=1000)

    def ledger_entries(self, hospital: HospitalProcess):
        from core.privacy.ledger import PrivacyLedger

        with PrivacyLedger(HospitalHome.at(hospital.home).ledger) as ledger:
            return ledger.entries(), ledger.spent()

    def hospital_state(self, hospital: HospitalProcess) -> dict:
        return json.loads((hospital.membership / "state.json").read_text())

    def audit(self, hospital: HospitalProcess):
        """The hospital home's audit log, verified with the hospital's own identity key."""
        from core.audit import verify_audit_log
        from core.signing import load_private_key, public_key_bytes

        home = HospitalHome.at(hospital.home)
        return verify_audit_log(home.audit_log, public_key_bytes(load_private_key(home.identity_key)))


@pytest.fixture(scope="session")
def federation_factory(tmp_path_factory, demo_data):
    runs = []

    def make(name: str, **kwargs) -> FederationRun:
        run = FederationRun(tmp_path_factory.mktemp(name), demo_data, **kwargs)
        runs.append(run)
        return run

    yield make
    for run in runs:
        run.close()


@pytest.fixture
def threaded_federation(tmp_path, https_server):
    """``threaded_federation(init_config, data) -> {number: JoinResult}``: the real Coordinator behind real
    HTTPS in this process, and each hospital a thread named h000, h001, ... running the real client (so a
    test can wrap what the hospitals call, and tell them apart by thread name). Hospital k reads
    ``data/hospital_{k+1:02d}`` and keeps its home in ``tmp_path/home{k}``."""
    import threading

    from core.federation.app import create_app
    from core.federation.client import JoinConfig
    from core.federation.client import run as join
    from core.federation.coordinator import Coordinator

    def run(config: InitConfig, data: Path, timeout_s: float = 240.0) -> dict:
        init = init_federation(config)
        service = Coordinator(config.folder)
        results: dict = {}

        def hospital(number: int) -> None:
            results[number] = join(JoinConfig(
                invitation=sorted(init.invitations)[number], data=data / f"hospital_{number + 1:02d}",
                home=tmp_path / f"home{number}", max_epsilon=100.0, accept_roster="any", poll_wait_s=1.0,
                give_up_after_s=60.0))

        service.start()
        tls = Path(config.folder) / "tls"
        try:
            with https_server(create_app(service), tls / "server.pem", tls / "server.key", port=config.port):
                threads = [threading.Thread(target=hospital, args=(k,), name=f"h{k:03d}")
                           for k in range(config.hospitals)]
                for thread in threads:
                    thread.start()
                deadline = time.monotonic() + timeout_s
                for thread in threads:
                    thread.join(timeout=max(0.0, deadline - time.monotonic()))
                assert not any(t.is_alive() for t in threads), "a hospital did not finish"
        finally:
            service.stop()
        return results

    return run
