"""Trusted model signers: the hospital's own key, coordinators of joined federations, keys added by hand."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest
import torch

from core.errors import ConfigError
from core.home import HospitalHome
from core.models import build_model
from core.models.package import ModelCard, read_package, write_package
from core.models.trust import (
    ADDED_BY_USER,
    FEDERATION_COORDINATOR,
    THIS_HOSPITAL,
    TrustStore,
    decode_public_key,
    signer_status,
)
from core.signing import fingerprint, generate_private_key, public_key_bytes, save_private_key


def make_package(path, key, *, epsilon=2.5):
    torch.manual_seed(0)
    card = ModelCard(
        architecture="small_cnn", classes=["a", "b"], preprocessing={"size": 32}, mode="cdp", epsilon=epsilon,
        delta=1e-5, accountant="rdp", noise_multiplier=1.0, sample_rate=0.1, max_grad_norm=1.0, steps=10,
        rounds=None, hospitals=1, image_counts={"local": 50}, metrics={}, created="2026-01-01T00:00:00+00:00",
        software_version="0.1.0")
    write_package(path, build_model("small_cnn", 2).state_dict(), card, key)
    return read_package(path, require_signature=False)


@pytest.fixture
def home(tmp_path):
    return HospitalHome.at(tmp_path / "home")


def join(home, name, key, *, as_text=True, federation_id="0123456789abcdef", hospital_id="h01"):
    folder = home.federation_dir(name, federation_id, hospital_id)
    folder.mkdir(parents=True)
    encoded = base64.b64encode(public_key_bytes(key)).decode()
    if as_text:
        (folder / "coordinator-signing-key.txt").write_text(encoded + "\n")
    else:
        (folder / "invitation.json").write_text(json.dumps({"federation_name": name,
                                                            "coordinator_signing_key": encoded}))
    return folder


def test_an_empty_home_trusts_nobody(home, tmp_path):
    store = TrustStore(home)
    assert store.list() == [] and store.trusted_keys() == {}
    status = signer_status(make_package(tmp_path / "m.dpm", generate_private_key()), store)
    assert status.signature_valid and not status.signer_trusted and status.level == "unknown signer"
    assert "unknown signer" in status.text and "unverified" in status.text


def test_the_hospitals_own_key_is_trusted(home, tmp_path):
    own = home.identity()
    signers = TrustStore(home).list()
    assert [(s.kind, s.fingerprint) for s in signers] == [(THIS_HOSPITAL, fingerprint(public_key_bytes(own)))]
    status = signer_status(make_package(tmp_path / "m.dpm", own), TrustStore(home))
    assert status.signer_trusted and status.level == "trusted" and status.signer_kind == THIS_HOSPITAL
    assert status.text == "Signed by a trusted signer (this hospital)"


def test_a_key_from_before_the_hospital_home_is_still_the_hospitals(home):
    legacy = generate_private_key()
    save_private_key(legacy, home.identity_key.with_name("hospital_ed25519.pem"))
    assert TrustStore(home).trusted_keys()[public_key_bytes(legacy)].kind == THIS_HOSPITAL


def test_coordinators_of_joined_federations_are_trusted(home, tmp_path):
    first, second = generate_private_key(), generate_private_key()
    join(home, "Retina network", first)
    join(home, "Eye study 2026", second, as_text=False, federation_id="fedcba9876543210")
    (home.federations / "unrelated-folder").mkdir()
    ((home.federations / "unrelated-folder") / "coordinator-signing-key.txt").write_text("not base64 !!")
    keys = TrustStore(home).trusted_keys()
    assert {k: (s.kind, s.name) for k, s in keys.items()} == {
        public_key_bytes(first): (FEDERATION_COORDINATOR, "Retina network"),
        public_key_bytes(second): (FEDERATION_COORDINATOR, "Eye study 2026"),
    }
    status = signer_status(make_package(tmp_path / "m.dpm", first), keys)
    assert status.signer_trusted and status.text == "Signed by a trusted signer (the coordinator of Retina network)"


def test_added_keys_round_trip_and_are_removed_by_fingerprint(home, tmp_path):
    store = TrustStore(home)
    sender = generate_private_key()
    raw = public_key_bytes(sender)
    added = store.add(raw, "  City   Eye Clinic ", source=str(tmp_path / "from-usb.dpm"))
    assert (added.name, added.kind, added.fingerprint) == ("City Eye Clinic", ADDED_BY_USER, fingerprint(raw))
    assert stat.S_IMODE(os.stat(home.trusted_keys).st_mode) == 0o600
    saved = json.loads(home.trusted_keys.read_text())
    assert saved["keys"][0]["public_key"] == base64.b64encode(raw).decode()
    assert saved["keys"][0]["source"].endswith("from-usb.dpm") and saved["keys"][0]["added"]

    # A fresh store (another process) sees it; adding it again renames it instead of listing it twice.
    assert TrustStore(home).trusted_keys()[raw].name == "City Eye Clinic"
    store.add(raw, "City Eye Clinic (Dr. Roe)", source="--key")
    assert [s.name for s in TrustStore(home).list()] == ["City Eye Clinic (Dr. Roe)"]
    status = signer_status(make_package(tmp_path / "m.dpm", sender), store)
    assert status.text == "Signed by a trusted signer (City Eye Clinic (Dr. Roe) (added by you))"

    with pytest.raises(ConfigError, match="at least 8 hex digits"):
        store.remove(added.fingerprint[:4])
    with pytest.raises(ConfigError, match="No key added by you"):
        store.remove("0000 0000 0000")
    removed = store.remove(added.fingerprint[:14].upper())  # "AB12 CD34 EF56": spaces and case do not matter
    assert removed.public_key == raw and TrustStore(home).list() == []
    assert not signer_status(make_package(tmp_path / "m.dpm", sender), store).signer_trusted


def test_the_hospitals_own_key_cannot_be_removed(home):
    store = TrustStore(home)
    own = public_key_bytes(home.identity())
    with pytest.raises(ConfigError, match="cannot be removed here"):
        store.remove(fingerprint(own))
    assert TrustStore(home).trusted_keys()[own].kind == THIS_HOSPITAL


def test_a_damaged_trust_file_is_reported_and_never_overwritten(home):
    home.ensure()
    home.trusted_keys.write_text('{"format": "dopamine-trusted-keys", "version": 1, "keys": [{"public_key": 1}]}')
    before = home.trusted_keys.read_bytes()
    with pytest.raises(ConfigError, match="damaged"):
        TrustStore(home).trusted_keys()
    with pytest.raises(ConfigError, match="damaged"):
        TrustStore(home).add(public_key_bytes(generate_private_key()), "x", source="--key")
    assert home.trusted_keys.read_bytes() == before


def test_bad_keys_and_names_are_refused(home):
    with pytest.raises(ConfigError, match="base64"):
        decode_public_key("not-a-key")
    with pytest.raises(ConfigError, match="base64"):
        decode_public_key(base64.b64encode(b"\1" * 31).decode())
    assert decode_public_key(base64.b64encode(b"\1" * 32).decode()) == b"\1" * 32
    with pytest.raises(ConfigError, match="name"):
        TrustStore(home).add(b"\1" * 32, "   ", source="--key")
    assert not home.trusted_keys.exists()


def test_a_signature_that_does_not_verify_is_never_trusted(home, tmp_path):
    own = home.identity()
    package = make_package(tmp_path / "m.dpm", own)
    package.signature_ok = False  # as read_package reports a changed file signed by this very key
    status = signer_status(package, TrustStore(home))
    assert not status.signer_trusted and status.level == "invalid" and "does not verify" in status.text
