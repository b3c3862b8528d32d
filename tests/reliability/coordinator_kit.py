"""A coordinator to attack: a real federation folder, the ``Coordinator`` in this process, and hospitals
that sign their requests the way core.federation.transport does, but let a test break any part.

``LiveFederation`` serves it in-process (``client``: starlette's TestClient, fast, for fuzzing bodies) or
over real HTTPS with the federation's CA (``serve()``, for schemathesis, the authentication checks and
the TLS scanners). ``bring_to_round()`` enrolls every hospital and signs the roster, so that round 1 is
open at its first step. Part A of the campaign (kill -9, a misbehaving network, scale) builds on it.
"""

from __future__ import annotations

import base64
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.federation.auth import sign_request
from core.federation.invitation import read_invitation
from core.federation.layout import InitConfig, init_federation
from core.secagg.crypto import ed25519_public_bytes


@dataclass
class Hospital:
    hospital_id: str
    token: str
    key: Ed25519PrivateKey

    @property
    def public_key(self) -> bytes:
        return ed25519_public_bytes(self.key)

    def headers(self, method: str, path: str, body: bytes, federation_id: str, *, now: float | None = None,
                key: Ed25519PrivateKey | None = None) -> dict[str, str]:
        """The authentication headers the hospital client sends (``path`` with its query string)."""
        return sign_request(key or self.key, method=method, path=path, body=body, hospital_id=self.hospital_id,
                            federation_id=federation_id, now=now)

    def enrollment(self, num_images: int = 24) -> bytes:
        return json.dumps({"token": self.token, "hospital_id": self.hospital_id,
                           "public_key": base64.b64encode(self.public_key).decode(), "num_images": num_images}).encode()


class LiveFederation:
    """A 3-hospital FSCDP federation (32 px small_cnn) in ``root``; ``start()`` the coordinator first."""

    def __init__(self, root: Path, *, name: str = "reliability", port: int | None = None, hosts=("127.0.0.1",),
                 **plan) -> None:
        from core.federation.simulate import free_port

        self.root = Path(root)
        self.port = port or free_port()
        settings = dict(mode="fscdp", rounds=2, hospitals=3, image_size=32, sample_rate=0.5, delta=1e-3,
                        key_phase_timeout_s=600.0, compute_phase_timeout_s=600.0)
        settings.update(plan)
        self.init = init_federation(InitConfig(folder=self.root / "fed", name=name, hosts=list(hosts),
                                               port=self.port, **settings))
        self.folder = self.root / "fed"
        self.federation_id = self.init.plan.federation_id
        self.invitations = [read_invitation(p) for p in sorted(self.init.invitations)]
        self.hospitals = [Hospital(i.hospital_id, i.token, Ed25519PrivateKey.generate()) for i in self.invitations]
        self.ca_file = self.folder / "tls" / "ca.pem"
        self.server_cert = self.folder / "tls" / "server.pem"
        self.server_key = self.folder / "tls" / "server.key"
        self.coordinator = None
        self._client = None

    # -- the coordinator ---------------------------------------------------------------------------

    def start(self):
        from core.federation.coordinator import Coordinator

        self.coordinator = Coordinator(self.folder)
        self.coordinator.start()
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.__exit__(None, None, None)
            self._client = None
        if self.coordinator is not None:
            self.coordinator.stop()
            self.coordinator = None

    def app(self):
        from core.federation.app import create_app

        return create_app(self.coordinator)

    @property
    def client(self):
        """An in-process HTTP client of the app (no sockets, no TLS): for fuzzing request bodies fast."""
        if self._client is None:
            from starlette.testclient import TestClient

            # A crash must come back as the 500 a hospital would get, not as the exception itself.
            self._client = TestClient(self.app(), base_url="https://coordinator.test", raise_server_exceptions=False)
            self._client.__enter__()
        return self._client

    @contextmanager
    def serve(self, https_server):
        """Serve over real HTTPS with the federation's certificate (tests/conftest.py ``https_server``)."""
        with https_server(self.app(), self.server_cert, self.server_key, port=self.port) as url:
            yield url

    @contextmanager
    def serve_process(self, timeout_s: float = 90.0):
        """``dopamine coordinator serve`` in its own process, exactly as an operator runs it (the TLS
        settings of core.federation.server); yields (host, port) once it completes a TLS handshake."""
        import signal
        import socket
        import ssl
        import subprocess
        import sys

        from core.federation.simulate import child_env

        process = subprocess.Popen([sys.executable, "-m", "core.cli", "coordinator", "serve", str(self.folder)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=child_env(1))
        context = ssl.create_default_context(cafile=str(self.ca_file))
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                assert process.poll() is None, process.stdout.read().decode(errors="replace")[-2000:]
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=2) as raw:
                        with context.wrap_socket(raw, server_hostname="127.0.0.1"):
                            break
                except OSError:
                    assert time.monotonic() < deadline, "the coordinator did not start"
                    time.sleep(0.1)
            yield "127.0.0.1", self.port
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    # -- requests as a hospital makes them ---------------------------------------------------------

    def request(self, method: str, path: str, body: bytes = b"", *, hospital: Hospital | None = None,
                headers: dict | None = None, sign: bool = True, **sign_options):
        """One request through the in-process client, signed by ``hospital`` (default: the first)."""
        hospital = hospital or self.hospitals[0]
        sent = dict(headers or {})
        if sign:
            sent = {**hospital.headers(method, path, body, self.federation_id, **sign_options), **sent}
        if body:
            sent.setdefault("Content-Type", "application/octet-stream")
        return self.client.request(method, path, content=body or None, headers=sent)

    def bring_to_round(self, timeout_s: float = 30.0) -> dict:
        """Enroll every hospital, sign the roster; return the state view once round 1 is open."""
        from core.federation.roster import roster_message

        for hospital in self.hospitals:
            answer = self.request("POST", "/v1/enroll", hospital.enrollment(), hospital=hospital,
                                  headers={"Content-Type": "application/json"})
            assert answer.status_code == 200, answer.text
        roster = self._wait(lambda: self.request("GET", "/v1/roster").json(), lambda v: v["roster"], timeout_s)
        for hospital in self.hospitals:
            body = json.dumps({"digest": roster["digest"], "signature": base64.b64encode(
                hospital.key.sign(roster_message(roster["digest"]))).decode()}).encode()
            answer = self.request("POST", "/v1/roster/signature", body, hospital=hospital,
                                  headers={"Content-Type": "application/json"})
            assert answer.status_code == 200, answer.text
        return self._wait(lambda: self.request("GET", "/v1/state").json(),
                          lambda v: v["status"] == "running" and v["phase"], timeout_s)

    @staticmethod
    def _wait(read, done, timeout_s: float):
        deadline = time.monotonic() + timeout_s
        while True:
            value = read()
            if done(value):
                return value
            assert time.monotonic() < deadline, f"the federation did not get there: {value}"
            time.sleep(0.05)
