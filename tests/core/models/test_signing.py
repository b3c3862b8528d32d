"""Ed25519 key files and fingerprints."""

import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ec import SECP256R1
from cryptography.hazmat.primitives.asymmetric.ec import generate_private_key as ec_key

from core.errors import KeyFileError
from core.signing import (
    fingerprint,
    generate_private_key,
    load_or_create_private_key,
    load_private_key,
    public_key_bytes,
    save_private_key,
    sign,
    verify,
)


def test_save_and_load_private_key(tmp_path):
    key = generate_private_key()
    path = tmp_path / "keys" / "signing.pem"
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public_key_bytes(load_private_key(path)) == public_key_bytes(key)
    assert not [p for p in path.parent.iterdir() if p.name != "signing.pem"]  # no temp files left


def test_load_or_create_creates_once(tmp_path):
    path = tmp_path / "id.pem"
    first = load_or_create_private_key(path)
    second = load_or_create_private_key(path)
    assert public_key_bytes(first) == public_key_bytes(second)


def test_bad_key_files(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        load_private_key(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(KeyFileError, match="junk.pem is not a usable private key"):
        load_private_key(tmp_path / "junk.pem")
    other = ec_key(SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ec.pem").write_bytes(other)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        load_private_key(tmp_path / "ec.pem")


def test_fingerprint_format():
    key = generate_private_key()
    text = fingerprint(public_key_bytes(key))
    groups = text.split(" ")
    assert len(groups) == 16 and all(len(g) == 4 and int(g, 16) >= 0 for g in groups)
    assert fingerprint(public_key_bytes(key.public_key())) == text
    assert fingerprint(public_key_bytes(generate_private_key())) != text


def test_sign_and_verify():
    key = generate_private_key()
    raw = public_key_bytes(key)
    signature = sign(key, b"message")
    assert len(raw) == 32 and len(signature) == 64
    assert verify(raw, signature, b"message")
    assert not verify(raw, signature, b"messagE")
    assert not verify(public_key_bytes(generate_private_key()), signature, b"message")
    assert not verify(b"short", signature, b"message")
