"""TLS, checked from outside: the coordinator as an operator runs it (``dopamine coordinator serve``, in its
own process) and the hospital client.

In ``make test``, handshakes with Python's ``ssl`` module and explicit versions and cipher suites: only
TLS 1.2 and 1.3, only forward-secret AEAD suites on TLS 1.2, the chain and the host names right. Each probe
first proves it can succeed (against a deliberately weak server of our own), so a refusal means the
coordinator refused. In ``make reliability`` also sslyze, the scanner (its own environment: it pins an
older ``cryptography`` than Dopamine's, see the Makefile), with the report kept in build/reliability/.

The client side: the real CoordinatorConnection against servers with certificates made on the fly:
another CA, expired, not yet valid, the wrong name, a leaf that signs another leaf. Each is refused with a
message that says what is wrong; the genuine one works.
"""

import datetime as dt
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import threading
from pathlib import Path

import pytest
from coordinator_kit import LiveFederation
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from reliability_kit import COUNTS, write_json

# A coordinator process; the probes use TLS 1.0 and 1.1 on purpose.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")]

ROOT = Path(__file__).resolve().parents[2]
# TLS 1.2 suites worth accepting: ephemeral ECDH key exchange (forward secrecy) and an AEAD cipher.
STRONG_TLS12 = {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305",
                "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"}
OLD_VERSIONS = (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    federation = LiveFederation(tmp_path_factory.mktemp("tls"), hosts=("127.0.0.1", "coordinator.example.org"))
    with federation.serve_process() as (host, port):
        yield federation, host, port


def _client(version_min=None, version_max=None, ciphers="ALL:COMPLEMENTOFALL:@SECLEVEL=0", ca=None):
    """A client that offers exactly what a scanner would (nothing verified unless ``ca``)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if ca is None:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_verify_locations(str(ca))
    context.set_ciphers(ciphers)
    if version_min:
        context.minimum_version = version_min
    if version_max:
        context.maximum_version = version_max
    return context


def _handshake(context, host, port, server_hostname=None):
    """(version, cipher) the server agreed to, or None when it refused."""
    try:
        with socket.create_connection((host, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=server_hostname or host) as tls:
                return tls.version(), tls.cipher()[0]
    except (ssl.SSLError, ConnectionResetError):
        return None
    finally:
        COUNTS["tls"]["cases"] += 1


@pytest.fixture(scope="module")
def weak_server(tmp_path_factory):
    """A TLS server that accepts everything this OpenSSL can still speak: the probes' positive control."""
    folder = tmp_path_factory.mktemp("weak")
    key, cert = _leaf(_ca("weak")[0], _ca("weak")[1], ["127.0.0.1"])
    certfile, keyfile = _write(folder, "weak", key, cert)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
    context.set_ciphers("ALL:COMPLEMENTOFALL:@SECLEVEL=0")
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                continue
            try:
                with context.wrap_socket(raw, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield "127.0.0.1", listener.getsockname()[1]
    stop.set()
    thread.join(5)
    listener.close()


def test_only_tls_1_2_and_1_3(coordinator, weak_server):
    _, host, port = coordinator
    for version in OLD_VERSIONS:
        probe = _client(version, version)
        if _handshake(probe, *weak_server) is None:
            pytest.fail(f"this OpenSSL cannot offer {version.name} at all, so the probe proves nothing")
        assert _handshake(probe, host, port) is None, f"the coordinator accepted {version.name}"
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        agreed = _handshake(_client(version, version), host, port)
        assert agreed is not None and agreed[0] == {"TLSv1_2": "TLSv1.2", "TLSv1_3": "TLSv1.3"}[version.name]


def test_tls_1_2_suites_are_forward_secret_and_authenticated_encryption(coordinator, weak_server):
    _, host, port = coordinator
    offered = [c["name"] for c in _client().get_ciphers() if c["protocol"] != "TLSv1.3"]
    accepted = []
    for name in offered:
        try:
            probe = _client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, ciphers=f"{name}:@SECLEVEL=0")
        except ssl.SSLError:
            continue
        if _handshake(probe, host, port) is not None:
            accepted.append(name)
    assert _handshake(_client(ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA:"
                                                                                      "@SECLEVEL=0"), *weak_server)
    weak = sorted(set(accepted) - STRONG_TLS12)
    assert accepted and not weak, f"the coordinator accepts weak TLS 1.2 suites: {weak}"
    write_json(ROOT / "build" / "reliability" / "tls-suites.json", {"tls1.2_accepted": sorted(accepted),
                                                                      "tls1.2_offered": len(offered)})


def test_the_chain_and_the_names(coordinator):
    federation, host, port = coordinator
    leaf = None
    for name in ("127.0.0.1", "coordinator.example.org"):  # every host of coordinator.toml, IP and DNS
        context = ssl.create_default_context(cafile=str(federation.ca_file))
        with socket.create_connection((host, port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                leaf = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
    for wrong in ("localhost", "10.0.0.1", "coordinator.example.com"):
        context = ssl.create_default_context(cafile=str(federation.ca_file))
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            with socket.create_connection((host, port), timeout=10) as raw:
                context.wrap_socket(raw, server_hostname=wrong)
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey) and leaf.public_key().curve.name == "secp256r1"
    assert leaf.signature_hash_algorithm.name == "sha256"
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert ExtendedKeyUsageOID.SERVER_AUTH in leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc <= dt.timedelta(days=826)  # browsers' 825-day rule
    ca = x509.load_pem_x509_certificate(federation.ca_file.read_bytes())
    assert leaf.issuer == ca.subject
    served = x509.load_pem_x509_certificates(federation.server_cert.read_bytes())
    assert [c.subject for c in served] == [leaf.subject, ca.subject], "the server sends its leaf, then the CA"


# --- the hospital client refuses what is not its coordinator ----------------------------------------------

def _now():
    return dt.datetime.now(dt.UTC)


def _ca(name, *, days=30):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test CA {name}")])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(_now() - dt.timedelta(days=1))
            .not_valid_after(_now() + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key, ca_cert, hosts, *, start=-1, end=30, ca=False):
    key = ec.generate_private_key(ec.SECP256R1())
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(_now() + dt.timedelta(days=start)).not_valid_after(_now() + dt.timedelta(days=end))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write(folder: Path, name: str, key, *certs) -> tuple[Path, Path]:
    certfile, keyfile = folder / f"{name}.pem", folder / f"{name}.key"
    certfile.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def _health_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/health")
    def health():
        return {"status": "ok"}

    return app


CASES = {  # name -> (how the server's certificate is made, what the refusal must say)
    "genuine": (lambda ca_key, ca: _leaf(ca_key, ca, ["127.0.0.1"]), None),
    "another CA": (lambda ca_key, ca: _leaf(*_ca("impostor"), ["127.0.0.1"]), "signed by this federation's CA"),
    "expired": (lambda ca_key, ca: _leaf(ca_key, ca, ["127.0.0.1"], start=-30, end=-1), "expired"),
    "not yet valid": (lambda ca_key, ca: _leaf(ca_key, ca, ["127.0.0.1"], start=2, end=30), "not valid yet"),
    "wrong name": (lambda ca_key, ca: _leaf(ca_key, ca, ["coordinator.example.org", "10.9.9.9"]), "not for 127.0.0.1"),
    "a leaf signing a leaf": (None, "signed by this federation's CA"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_client_refuses_certificates_that_are_not_its_coordinators(case, tmp_path, https_server):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.errors import NetworkError
    from core.federation.transport import CoordinatorConnection

    ca_key, ca = _ca("federation")
    make, words = CASES[case]
    if make is None:  # a genuine leaf (not a CA) used as an issuer
        middle_key, middle = _leaf(ca_key, ca, ["127.0.0.1"])
        key, cert = _leaf(middle_key, middle, ["127.0.0.1"])
        chain = (cert, middle)
    else:
        key, cert = make(ca_key, ca)
        chain = (cert,)
    certfile, keyfile = _write(tmp_path, "server", key, *chain)
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    with https_server(_health_app(), certfile, keyfile) as url:
        connection = CoordinatorConnection(url, ca_file, federation_id="f", hospital_id="h01",
                                           key=Ed25519PrivateKey.generate(), give_up_after_s=2, max_backoff_s=0.2)
        try:
            if words is None:
                assert connection.get_json("/v1/health")["status"] == "ok"
            else:
                with pytest.raises(NetworkError) as refused:
                    connection.get_json("/v1/health")
                message = str(refused.value)
                assert words in message and "\n" not in message, message
        finally:
            connection.close()
    COUNTS["tls"]["cases"] += 1


# --- sslyze (make reliability) ----------------------------------------------------------------------------

@pytest.mark.campaign
def test_sslyze_finds_nothing_weak(coordinator):
    federation, host, port = coordinator
    python = os.environ.get("DOPAMINE_SSLYZE")
    assert python, "DOPAMINE_SSLYZE names the Python that has sslyze (make reliability sets it)"
    out = ROOT / "build" / "reliability" / "sslyze.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    # Also against Mozilla's "intermediate" profile: its verdict is kept (sslyze.txt), not required; it
    # asks for public-web rules (certificates of at most 366 days) a private federation CA need not follow.
    scan = subprocess.run([python, "-m", "sslyze", f"{host}:{port}", f"--certinfo_ca_file={federation.ca_file}",
                           f"--json_out={out}", "--mozilla_config=intermediate"], capture_output=True, text=True,
                          timeout=300)
    (out.parent / "sslyze.txt").write_text(scan.stdout[-20000:] + scan.stderr[-5000:])
    report = json.loads(out.read_text())
    (server,) = report["server_scan_results"]
    assert server["scan_status"] == "COMPLETED", server.get("connectivity_error_trace")
    results = server["scan_result"]
    for old in ("ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"):
        assert not results[old]["result"]["accepted_cipher_suites"], f"{old} accepted"
    tls12 = {s["cipher_suite"]["openssl_name"] for s in results["tls_1_2_cipher_suites"]["result"]["accepted_cipher_suites"]}
    assert tls12 and tls12 <= STRONG_TLS12, f"weak TLS 1.2 suites: {sorted(tls12 - STRONG_TLS12)}"
    assert results["tls_1_3_cipher_suites"]["result"]["accepted_cipher_suites"]
    assert not results["heartbleed"]["result"]["is_vulnerable_to_heartbleed"]
    assert not results["openssl_ccs_injection"]["result"]["is_vulnerable_to_ccs_injection"]
    assert results["robot"]["result"]["robot_result"].startswith("NOT_VULNERABLE")
    assert not results["tls_compression"]["result"]["supports_compression"]
    assert results["tls_fallback_scsv"]["result"]["supports_fallback_scsv"]
    assert results["tls_extended_master_secret"]["result"]["supports_ems_extension"]
    renegotiation = results["session_renegotiation"]["result"]
    assert not renegotiation["is_vulnerable_to_client_renegotiation_dos"]
    assert renegotiation["supports_secure_renegotiation"]
    (deployment,) = results["certificate_info"]["result"]["certificate_deployments"]
    assert len(deployment["received_certificate_chain"]) == 2 and deployment["received_chain_has_valid_order"]
    assert not deployment["verified_chain_has_sha1_signature"]
    supplied = [v for v in deployment["path_validation_results"] if v["trust_store"]["name"] == "Supplied CA file"]
    assert supplied and supplied[0]["was_validation_successful"], "the chain does not verify with the federation CA"
    COUNTS["tls"]["cases"] += 1
