"""The federation's own certificate authority and the coordinator's server certificate.

Hospitals pin the federation CA (it travels inside each invitation), so the coordinator needs no
public CA and nobody else can impersonate it. Keys are EC P-256: every TLS stack accepts them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from core.config import atomic_write_bytes
from core.errors import FederationError

CA_VALIDITY_DAYS = 3650
SERVER_VALIDITY_DAYS = 825
# TLS 1.2 suites the coordinator accepts: ephemeral ECDH (forward secrecy) with AES-GCM or ChaCha20-Poly1305.
# Python's default list also allows AES-CBC with SHA-2 HMACs, which scanners rate weak (Lucky 13-style
# padding oracles); TLS 1.3's suites are all AEAD and are not affected by this list.
SERVER_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path


def tls_files(folder: Path) -> TlsFiles:
    folder = Path(folder)
    return TlsFiles(folder / "ca.pem", folder / "ca.key", folder / "server.pem", folder / "server.key")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def create_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Dopamine federation CA: {name}"[:64])])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CA_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _san_entries(hosts: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for host in hosts:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            entries.append(x509.DNSName(host))
    return entries


def create_server_certificate(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A serverAuth certificate whose subjectAltName lists every host name and IP address in ``hosts``."""
    if not hosts:
        raise FederationError("The coordinator needs at least one host name or IP address (--host).")
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0][:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=SERVER_VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san_entries(hosts)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def write_federation_tls(folder: Path, *, name: str, hosts: list[str]) -> TlsFiles:
    """Create the CA and the server certificate in ``folder``; private keys are written 0600."""
    files = tls_files(folder)
    ca_key, ca_cert = create_ca(name)
    server_key, server_cert = create_server_certificate(ca_key, ca_cert, hosts)
    atomic_write_bytes(files.ca_key, _key_pem(ca_key), mode=0o600)
    atomic_write_bytes(files.server_key, _key_pem(server_key), mode=0o600)
    atomic_write_bytes(files.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    atomic_write_bytes(
        files.server_cert,
        server_cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM),
    )
    return files


def server_ssl_context(config: object, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """The coordinator's TLS settings (uvicorn's ``ssl_context_factory``): TLS 1.2 or newer, forward-secret
    AEAD suites only, no compression, no renegotiation; the certificate and key are uvicorn's to load."""
    context = default_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(SERVER_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context


def load_certificate_pem(pem: bytes | str) -> x509.Certificate:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise FederationError(f"The federation CA certificate is not a valid PEM certificate ({exc}).") from exc


def certificate_fingerprint(pem: bytes | str) -> str:
    """SHA-256 of the certificate's DER bytes, hex in groups of 4 (compare it by phone)."""
    der = load_certificate_pem(pem).public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha256(der).hexdigest()
    return " ".join(digest[i : i + 4] for i in range(0, len(digest), 4))
