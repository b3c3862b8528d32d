"""The hospital client trusts only its federation's CA, never plain HTTP, never the system bundle."""

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI

from core.errors import FederationError, NetworkError
from core.federation.tls import certificate_fingerprint, write_federation_tls
from core.federation.transport import CoordinatorConnection


def _app():
    app = FastAPI()

    @app.get("/v1/health")
    def health():
        return {"status": "ok"}

    return app


@pytest.fixture(scope="module")
def federations(tmp_path_factory):
    root = tmp_path_factory.mktemp("tls")
    ours = write_federation_tls(root / "ours", name="ours", hosts=["127.0.0.1", "localhost"])
    theirs = write_federation_tls(root / "theirs", name="theirs", hosts=["127.0.0.1", "localhost"])
    return ours, theirs


def _connection(url, ca_file, **kwargs):
    return CoordinatorConnection(url, ca_file, federation_id="f", hospital_id="h01", key=Ed25519PrivateKey.generate(),
                                 give_up_after_s=2, max_backoff_s=0.2, **kwargs)


def test_keys_are_private_and_certificate_names_the_hosts(federations):
    ours, _ = federations
    for key in (ours.ca_key, ours.server_key):
        assert oct(key.stat().st_mode & 0o777) == "0o600"
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(ours.server_cert.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert len(certificate_fingerprint(ours.ca_cert.read_text()).split()) == 16


def test_client_talks_to_the_pinned_coordinator(federations, https_server):
    ours, _ = federations
    with https_server(_app(), ours.server_cert, ours.server_key) as url:
        connection = _connection(url, ours.ca_cert)
        assert connection.get_json("/v1/health")["status"] == "ok"
        connection.close()


def test_client_refuses_a_server_certificate_from_another_ca(federations, monkeypatch, https_server):
    ours, theirs = federations
    # Even if the machine's CA bundle trusted the impostor, the pinned CA is the only one used.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(theirs.ca_cert))
    with https_server(_app(), theirs.server_cert, theirs.server_key) as url:
        connection = _connection(url, ours.ca_cert)
        with pytest.raises(NetworkError, match="certificate signed by this federation's CA"):
            connection.get_json("/v1/health")
    assert os.environ["REQUESTS_CA_BUNDLE"] == str(theirs.ca_cert)


def test_client_refuses_plain_http(federations):
    ours, _ = federations
    with pytest.raises(FederationError, match="https"):
        _connection("http://127.0.0.1:1", ours.ca_cert)


def test_unreachable_coordinator_is_retried_then_reported(federations, unused_port):
    ours, _ = federations
    retries = []
    connection = _connection(f"https://127.0.0.1:{unused_port}", ours.ca_cert, on_retry=retries.append)
    with pytest.raises(NetworkError, match="gave up"):
        connection.get_json("/v1/health")
    assert retries and "retrying" in retries[0]


def test_cancel_interrupts_the_retry_wait(federations, unused_port, monkeypatch):
    import threading

    from core.errors import Cancelled
    from core.jobs import CancelToken

    ours, _ = federations
    cancel = CancelToken()
    connection = CoordinatorConnection(f"https://127.0.0.1:{unused_port}", ours.ca_cert, federation_id="f",
                                       hospital_id="h01", key=Ed25519PrivateKey.generate(), cancel=cancel,
                                       max_backoff_s=3600.0)
    # Every back-off is an hour: only an interrupted wait lets the request end.
    monkeypatch.setattr("core.federation.transport.random.uniform", lambda low, high: 7200.0)
    raised: list[BaseException] = []

    def request() -> None:
        try:
            connection.get_json("/v1/health")  # would retry forever
        except BaseException as exc:  # noqa: BLE001 -- checked below
            raised.append(exc)

    worker = threading.Thread(target=request, daemon=True)
    worker.start()
    threading.Timer(0.5, cancel.cancel).start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "cancel did not interrupt the hour-long retry wait"
    assert len(raised) == 1 and isinstance(raised[0], Cancelled)
