"""The signed model package (.dpm): round trip, tampering, malformed and hostile files."""

import base64
import hashlib
import io
import json
import pickle
import zipfile

import pytest
import torch

from core.errors import ModelPackageError, SignatureError
from core.models import build_model
from core.models.package import (
    CARD,
    SIGNATURE,
    WEIGHTS,
    ModelCard,
    load_model,
    read_package,
    signed_message,
    write_package,
)
from core.signing import fingerprint, generate_private_key, public_key_bytes, sign


def make_card(**changes) -> ModelCard:
    fields = dict(
        architecture="small_cnn",
        classes=["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"],
        preprocessing={"size": 32, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        mode="fscdp",
        epsilon=2.5,
        delta=1e-5,
        accountant="rdp",
        noise_multiplier=1.1,
        sample_rate=0.02,
        max_grad_norm=1.0,
        steps=120,
        rounds=120,
        hospitals=3,
        image_counts={"hospital_01": 200, "hospital_02": 180},
        metrics={"accuracy": 0.61, "kappa": 0.55},
        created="2026-05-01T12:00:00+00:00",
        software_version="0.1.0",
        description="test model",
    )
    fields.update(changes)
    return ModelCard(**fields)


@pytest.fixture
def key():
    return generate_private_key()


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model("small_cnn")


@pytest.fixture
def package_path(tmp_path, model, key):
    path = tmp_path / "model.dpm"
    write_package(path, model.state_dict(), make_card(), key)
    return path


def members_of(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def write_zip(path, members: dict[str, bytes] | list[tuple[str, bytes]]) -> None:
    items = members.items() if isinstance(members, dict) else members
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in items:
            archive.writestr(name, data)


def resign(members: dict[str, bytes], key) -> dict[str, bytes]:
    record = {
        "algorithm": "ed25519",
        "public_key": base64.b64encode(public_key_bytes(key)).decode(),
        "signature": base64.b64encode(sign(key, signed_message(members[WEIGHTS], members[CARD]))).decode(),
    }
    return {**members, SIGNATURE: json.dumps(record).encode()}


def test_round_trip(package_path, model, key):
    package = read_package(package_path)
    assert package.signature_ok
    assert package.card == make_card()
    assert package.signer_fingerprint == fingerprint(public_key_bytes(key))
    assert package.sha256 == hashlib.sha256(package_path.read_bytes()).hexdigest()
    assert set(members_of(package_path)) == {WEIGHTS, CARD, SIGNATURE}
    loaded = load_model(package)
    assert not loaded.training
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(loaded(x), model.eval()(x))


def test_trusted_signer_is_accepted(package_path, key):
    assert read_package(package_path, trusted_keys=[public_key_bytes(key)]).signature_ok


def test_same_model_and_card_give_the_same_file(tmp_path, model, key):
    first = write_package(tmp_path / "a.dpm", model.state_dict(), make_card(), key)
    second = write_package(tmp_path / "b.dpm", model.state_dict(), make_card(), key)
    assert first == second == hashlib.sha256((tmp_path / "a.dpm").read_bytes()).hexdigest()


def test_changed_weights_are_detected(package_path):
    members = members_of(package_path)
    weights = bytearray(members[WEIGHTS])
    weights[-3] ^= 0x01  # a bit of the last tensor's data; the zip is rebuilt with valid checksums
    write_zip(package_path, {**members, WEIGHTS: bytes(weights)})
    with pytest.raises(SignatureError, match=r"model\.dpm: .*weights\.safetensors was changed"):
        read_package(package_path)


def test_changed_card_is_detected_and_can_be_shown_unverified(package_path):
    members = members_of(package_path)
    card = json.loads(members[CARD])
    card["epsilon"] = 0.25  # someone advertising a stronger guarantee
    write_zip(package_path, {**members, CARD: json.dumps(card).encode()})
    with pytest.raises(SignatureError, match=r"model\.dpm: .*card\.json was changed"):
        read_package(package_path)
    package = read_package(package_path, require_signature=False)
    assert not package.signature_ok
    assert package.card.epsilon == 0.25


def test_flipped_byte_in_the_file_is_detected(package_path):
    data = bytearray(package_path.read_bytes())
    offset = data.index(b"classifier.weight") + 400  # inside the stored weights member
    data[offset] ^= 0xFF
    package_path.write_bytes(bytes(data))
    with pytest.raises(SignatureError, match=r"model\.dpm: weights\.safetensors was changed or damaged"):
        read_package(package_path)


def test_altered_signature_is_detected(package_path):
    members = members_of(package_path)
    record = json.loads(members[SIGNATURE])
    signature = bytearray(base64.b64decode(record["signature"]))
    signature[0] ^= 1
    record["signature"] = base64.b64encode(bytes(signature)).decode()
    write_zip(package_path, {**members, SIGNATURE: json.dumps(record).encode()})
    with pytest.raises(SignatureError, match="signature does not match"):
        read_package(package_path)


def test_resigned_by_someone_else(package_path, key):
    stranger = generate_private_key()
    members = members_of(package_path)
    card = json.loads(members[CARD])
    card["description"] = "improved"
    write_zip(package_path, resign({**members, CARD: json.dumps(card).encode()}, stranger))
    # Without a list of trusted keys the package is intact, but its signer is shown.
    package = read_package(package_path)
    assert package.signature_ok and package.signer_fingerprint == fingerprint(public_key_bytes(stranger))
    with pytest.raises(SignatureError, match=f"signed by an unknown key {fingerprint(public_key_bytes(stranger))}"):
        read_package(package_path, trusted_keys=[public_key_bytes(key)])
    # Valid signature and trusted signer are two facts: the signature still verifies, the signer is unknown.
    shown = read_package(package_path, require_signature=False, trusted_keys=[public_key_bytes(key)])
    assert shown.signature_ok and shown.signer_trusted is False
    assert read_package(package_path, trusted_keys=[public_key_bytes(stranger)]).signer_trusted is True
    assert read_package(package_path).signer_trusted is None  # nobody asked whom to trust


def test_missing_or_damaged_signature(package_path):
    members = members_of(package_path)
    write_zip(package_path, {**members, SIGNATURE: b'{"algorithm": "rsa"}'})
    with pytest.raises(SignatureError, match="signature.json is missing its Ed25519 signature"):
        read_package(package_path)
    assert not read_package(package_path, require_signature=False).signature_ok
    # A broken signature is never trusted, even when the key it names would be.
    record = json.loads(members[SIGNATURE])
    record["signature"] = base64.b64encode(b"\0" * 64).decode()
    write_zip(package_path, {**members, SIGNATURE: json.dumps(record).encode()})
    trusted = [base64.b64decode(record["public_key"])]
    shown = read_package(package_path, require_signature=False, trusted_keys=trusted)
    assert not shown.signature_ok and shown.signer_trusted is False
    with pytest.raises(SignatureError, match="signature does not match"):
        read_package(package_path, trusted_keys=trusted)


@pytest.mark.parametrize(
    "members",
    [
        [(WEIGHTS, b"w"), (CARD, b"{}")],
        [(WEIGHTS, b"w"), (CARD, b"{}"), (SIGNATURE, b"{}"), ("extra.py", b"print(1)")],
        [(WEIGHTS, b"w"), (CARD, b"{}"), (CARD, b"{}"), (SIGNATURE, b"{}")],
        [(WEIGHTS, b"w"), ("sub/card.json", b"{}"), (SIGNATURE, b"{}")],
    ],
    ids=["missing", "extra", "duplicate", "nested"],
)
def test_wrong_member_set(tmp_path, members):
    path = tmp_path / "odd.dpm"
    with pytest.warns(UserWarning) if len({n for n, _ in members}) < len(members) else _no_warning():
        write_zip(path, members)
    with pytest.raises(ModelPackageError, match="odd.dpm is not a Dopamine model package: it must hold exactly"):
        read_package(path)


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_oversized_member_is_refused_before_unpacking(package_path):
    members = members_of(package_path)
    # 3 MiB of spaces compress to a few kB: a small file that would unpack far past the card limit.
    bomb = b"{" + b" " * (3 * 1024 * 1024) + b"}"
    write_zip(package_path, resign({**members, CARD: bomb}, generate_private_key()))
    with zipfile.ZipFile(package_path) as archive:
        assert archive.getinfo(CARD).compress_size < 10_000
    with pytest.raises(ModelPackageError, match=r"card\.json would unpack to 3,145,730 bytes"):
        read_package(package_path)


def test_not_a_zip_and_missing_file(tmp_path):
    (tmp_path / "x.dpm").write_bytes(b"PK\x03\x04 but not really a zip")
    with pytest.raises(ModelPackageError, match="x.dpm is not a Dopamine model package"):
        read_package(tmp_path / "x.dpm")
    with pytest.raises(ModelPackageError, match="does not exist"):
        read_package(tmp_path / "nowhere.dpm")


def test_pickled_weights_are_never_unpickled(tmp_path, package_path, key):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    members = members_of(package_path)
    write_zip(package_path, resign({**members, WEIGHTS: pickle.dumps(Exploit())}, key))
    with pytest.raises(ModelPackageError, match="weights.safetensors is not a valid safetensors file"):
        read_package(package_path)
    assert not marker.exists()


def test_signed_but_invalid_card_json(package_path, key):
    members = members_of(package_path)
    write_zip(package_path, resign({**members, CARD: b'{"architecture": NaN}'}, key))
    with pytest.raises(ModelPackageError, match="card.json is not valid JSON"):
        read_package(package_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"surprise": 1}, "unknown field"),
        ({"schema_version": 2}, "newer Dopamine"),
        ({"architecture": "vgg16"}, "does not know"),
        ({"mode": "cdp", "epsilon": None}, "must state epsilon"),
        ({"classes": ["only one"]}, "'classes'"),
        ({"delta": 1.5}, "'delta'"),
        ({"steps": -1}, "'steps'"),
        ({"created": "yesterday"}, "'created'"),
    ],
)
def test_card_validation(package_path, key, change, message):
    members = members_of(package_path)
    card = {**json.loads(members[CARD]), **change}
    write_zip(package_path, resign({**members, CARD: json.dumps(card).encode()}, key))
    with pytest.raises(ModelPackageError, match=message):
        read_package(package_path)


def test_missing_card_field(package_path, key):
    members = members_of(package_path)
    card = json.loads(members[CARD])
    del card["classes"]
    write_zip(package_path, resign({**members, CARD: json.dumps(card).encode()}, key))
    with pytest.raises(ModelPackageError, match=r"lacks field\(s\) \['classes'\]"):
        read_package(package_path)


def test_weights_that_do_not_fit_the_declared_architecture(package_path, key):
    from safetensors.torch import save

    members = members_of(package_path)
    other = save(build_model("small_cnn", 3).state_dict())  # 3 outputs, card lists 5 classes
    write_zip(package_path, resign({**members, WEIGHTS: other}, key))
    with pytest.raises(ModelPackageError, match=r"model\.dpm: weights\.safetensors: tensor classifier\.(weight|bias) has shape"):
        read_package(package_path)


def test_write_refuses_mismatched_weights_and_unsaveable_cards(tmp_path, key):
    with pytest.raises(ModelPackageError, match="does not fit"):
        write_package(tmp_path / "a.dpm", build_model("squeezenet1_1").state_dict(), make_card(), key)
    with pytest.raises(ModelPackageError, match="cannot be saved as JSON"):
        write_package(tmp_path / "b.dpm", build_model("small_cnn").state_dict(), make_card(metrics={"loss": float("nan")}), key)
    assert not list(tmp_path.iterdir())


def test_card_dict_round_trip():
    card = make_card()
    assert ModelCard.from_dict(card.to_dict()) == card
    assert ModelCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card


def test_zip_written_by_write_package_is_plain(package_path):
    with zipfile.ZipFile(io.BytesIO(package_path.read_bytes())) as archive:
        assert archive.getinfo(WEIGHTS).compress_type == zipfile.ZIP_STORED
        assert archive.testzip() is None
