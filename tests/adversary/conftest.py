"""The adversary tests' harness: a coordinator in this process (so a test can make it lie), served over
real HTTPS, and real hospital clients, each with its own hospital home."""

import threading
import time
from pathlib import Path

import pytest

from core.federation.client import JoinConfig, run
from core.federation.coordinator import Coordinator
from core.federation.invitation import read_invitation
from core.federation.layout import InitConfig, init_federation
from core.federation.simulate import free_port
from core.home import HospitalHome


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from core.data.synthetic import write_demo_data

    root = tmp_path_factory.mktemp("lies-data")
    write_demo_data(root, hospitals=3, per_hospital=12, test_images=10, size=40, seed=5)
    return root


class Federation:
    """A 3-hospital FSCDP federation (32 px, small_cnn); ``run`` joins the chosen hospitals in threads."""

    def __init__(self, root: Path, data: Path, https_server, *, rounds: int = 1, homes: dict | None = None,
                 **plan) -> None:
        self.root, self.data = root, data
        port = free_port()
        self.init = init_federation(InitConfig(
            folder=root / "fed", name="lies", mode="fscdp", rounds=rounds, hospitals=3, hosts=["127.0.0.1"],
            port=port, image_size=32, sample_rate=0.5, delta=1e-3, key_phase_timeout_s=4.0,
            compute_phase_timeout_s=30.0, **plan))
        self.invitations = [read_invitation(p) for p in sorted(self.init.invitations)]
        self.service = Coordinator(root / "fed")
        self.https_server, self.port = https_server, port
        self.homes = homes or {}
        self.results: dict[int, object] = {}
        self.events: dict[int, list] = {}

    def home(self, number: int) -> HospitalHome:
        return HospitalHome.at(self.homes.get(number, self.root / f"home{number}"))

    def run(self, numbers=(1, 2, 3), accept_roster="any") -> None:
        self.service.start()
        tls = self.root / "fed" / "tls"
        with self.https_server(create_app(self.service), tls / "server.pem", tls / "server.key", port=self.port):
            threads = [threading.Thread(target=self._join, args=(n, accept_roster)) for n in numbers]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 150
            for thread in threads:
                thread.join(timeout=max(0.0, deadline - time.monotonic()))
            assert not any(t.is_alive() for t in threads), "a hospital client did not finish"
        self.service.stop()

    def _join(self, number: int, accept_roster) -> None:
        self.events[number] = events = []
        accepted = accept_roster(number) if callable(accept_roster) else accept_roster
        config = JoinConfig(invitation=sorted(self.init.invitations)[number - 1],
                            data=self.data / f"hospital_{number:02d}", home=self.home(number).root,
                            max_epsilon=100.0, accept_roster=accepted, poll_wait_s=1.0, give_up_after_s=30.0)
        try:
            self.results[number] = run(config, on_event=events.append)
        except Exception as exc:  # noqa: BLE001 -- the test inspects it
            self.results[number] = exc

    def ledger_keys(self, number: int) -> list[str]:
        from core.privacy.ledger import PrivacyLedger

        if not self.home(number).ledger.exists():
            return []
        with PrivacyLedger(self.home(number).ledger) as ledger:
            return [entry.key for entry in ledger.entries() if entry.key]

    def uploads(self, number: int, phase: str) -> list:
        from core.audit import read_audit_log

        return [e for e in read_audit_log(self.home(number).audit_log) if e.phase == phase]


def create_app(service):
    from core.federation.app import create_app as make

    return make(service)




@pytest.fixture
def federation_in_process():
    """``federation_in_process(root, data, https_server, rounds=1, **plan)`` -> Federation."""
    return Federation
