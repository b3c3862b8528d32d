"""Wire format: every message round-trips; hostile bytes get SecAggError, never anything else."""

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.errors import SecAggError
from core.secagg import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    RoundParams,
    ShareBundle,
    SurvivorSet,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    fixed_point_for_bound,
    parse_message,
)
from core.secagg.messages import MAGIC


@pytest.fixture(scope="module")
def messages():
    """One genuine message of every type, from a real round."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.secagg import SecAggClient, SecAggServer
    from core.secagg.crypto import ed25519_public_bytes

    ids = ["a", "b", "c"]
    keys = {h: Ed25519PrivateKey.generate() for h in ids}
    peers = {h: ed25519_public_bytes(k) for h, k in keys.items()}
    params = RoundParams("wire:1", 2, 10, fixed_point_for_bound(1.0, 3))
    server = SecAggServer(params, peers)
    clients = {h: SecAggClient(params, h, keys[h], peers) for h in ids}
    found = {}
    for h in ids:
        found[AdvertiseKeys] = clients[h].advertise()
        server.receive_advertise(found[AdvertiseKeys])
    found[KeyRoster] = server.close_advertise()
    for h in ids:
        found[EncryptedShares] = clients[h].share_keys(found[KeyRoster])
        server.receive_shares(found[EncryptedShares])
    bundles = server.close_sharing()
    found[ShareBundle] = bundles["a"]
    for h in ids:
        found[MaskedInput] = clients[h].mask_input(bundles[h], np.linspace(-1, 1, 10))
        server.receive_masked_input(found[MaskedInput])
    found[SurvivorSet] = server.close_masking()
    for h in ids:
        found[SurvivorSignature] = clients[h].sign_survivors(found[SurvivorSet])
        server.receive_survivor_signature(found[SurvivorSignature])
    found[UnmaskRequest] = server.close_consistency()
    found[UnmaskResponse] = clients["a"].unmask(found[UnmaskRequest])
    return found


def _split(data: bytes) -> tuple[dict, bytes]:
    (length,) = struct.unpack("<I", data[4:8])
    return json.loads(data[8 : 8 + length]), data[8 + length :]


def _join(header: dict, payload: bytes = b"") -> bytes:
    text = json.dumps(header).encode()
    return MAGIC + struct.pack("<I", len(text)) + text + payload


def test_every_message_round_trips(messages):
    for cls, message in messages.items():
        data = message.to_bytes()
        parsed = cls.from_bytes(data)
        assert type(parsed) is cls
        if cls is MaskedInput:
            assert np.array_equal(parsed.vector, message.vector) and parsed.vector.dtype == np.uint32
            assert parsed.signature == message.signature
        else:
            assert parsed == message
        assert parse_message(data).to_bytes() == data
    with pytest.raises(SecAggError, match="expected"):
        AdvertiseKeys.from_bytes(messages[UnmaskRequest].to_bytes())


def test_masked_input_is_json_header_plus_raw_little_endian(messages):
    message = messages[MaskedInput]
    header, payload = _split(message.to_bytes())
    assert header["dtype"] == "uint32" and header["length"] == 10
    assert payload == message.vector.astype("<u4").tobytes()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda h, p: (h, p + b"\0"),  # payload longer than declared
        lambda h, p: (h, p[:-1]),  # shorter
        lambda h, p: ({**h, "length": 11}, p),
        lambda h, p: ({**h, "length": True}, p),
        lambda h, p: ({**h, "dtype": "float64"}, p),
        lambda h, p: ({**h, "dtype": "<u4"}, p),
        lambda h, p: ({**h, "extra": 1}, p),
        lambda h, p: ({k: v for k, v in h.items() if k != "signature"}, p),
        lambda h, p: ({**h, "signature": h["signature"][:-4]}, p),
        lambda h, p: ({**h, "signature": "!" * 88}, p),
        lambda h, p: ({**h, "sender": "../etc/passwd"}, p),
        lambda h, p: ({**h, "sender": "coordinator"}, p),
        lambda h, p: ({**h, "round_id": ""}, p),
        lambda h, p: ({**h, "round_id": 7}, p),
        lambda h, p: ({**h, "type": "pickle"}, p),
        lambda h, p: ({**h, "length": 2**40}, p),
    ],
)
def test_hostile_masked_inputs_are_refused(messages, mutate):
    header, payload = _split(messages[MaskedInput].to_bytes())
    with pytest.raises(SecAggError):
        parse_message(_join(*mutate(header, payload)))


@pytest.mark.parametrize(
    ("cls", "mutate"),
    [
        (AdvertiseKeys, lambda h: {**h, "enc_public": h["enc_public"][:-4]}),  # 30 bytes
        (AdvertiseKeys, lambda h: {**h, "mask_public": 5}),
        (KeyRoster, lambda h: {**h, "sender": "a"}),
        (KeyRoster, lambda h: {**h, "adverts": h["adverts"][::-1]}),  # must be sorted
        (KeyRoster, lambda h: {**h, "adverts": [h["adverts"][0], h["adverts"][0]]}),
        (KeyRoster, lambda h: {**h, "adverts": ["x"]}),
        (KeyRoster, lambda h: {**h, "adverts": {"a": 1}}),
        (EncryptedShares, lambda h: {**h, "ciphertexts": {"b": "AAAA"}}),
        (EncryptedShares, lambda h: {**h, "ciphertexts": [1, 2]}),
        (ShareBundle, lambda h: {**h, "recipient": ""}),
        (UnmaskRequest, lambda h: {**h, "survivors": ["b", "a"]}),
        (UnmaskRequest, lambda h: {**h, "dropped": "a"}),
        (UnmaskRequest, lambda h: {**h, "signatures": {"a": "AAAA"}}),
        (SurvivorSet, lambda h: {**h, "survivors": ["a", "a"]}),
        (SurvivorSignature, lambda h: {**h, "sender": "coordinator"}),
        (SurvivorSignature, lambda h: {**h, "signature": 7}),
        (UnmaskResponse, lambda h: {**h, "seed_shares": {"a": "//" * 22}}),  # 2^264-ish: outside the field
        (UnmaskResponse, lambda h: {**h, "key_shares": {"a": 12}}),
    ],
)
def test_hostile_headers_are_refused(messages, cls, mutate):
    header, payload = _split(messages[cls].to_bytes())
    with pytest.raises(SecAggError):
        parse_message(_join(mutate(header), payload))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"DSA1",
        b"NOPE" + b"\0" * 20,
        MAGIC + struct.pack("<I", 2**31) + b"{}",
        MAGIC + struct.pack("<I", 5) + b"{}",
        _join([]),  # type: ignore[arg-type]
        MAGIC + struct.pack("<I", 3) + b"\xff\xfe\x00",
        MAGIC + struct.pack("<I", 24) + b'{"type":"a","type":"b"}',
        MAGIC + struct.pack("<I", 20_001) + b"[" * 20_000 + b"]",
        "not bytes",
    ],
)
def test_malformed_bytes_are_refused(data):
    with pytest.raises(SecAggError):
        parse_message(data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_ever_raise_secagg_error(data):
    try:
        parse_message(MAGIC + struct.pack("<I", len(data)) + data)
    except SecAggError:
        pass


@settings(max_examples=100, deadline=None)
@given(index=st.integers(min_value=0, max_value=10_000), bit=st.integers(min_value=0, max_value=7))
def test_single_bit_flips_never_crash_the_parser(messages, index, bit):
    data = bytearray(messages[UnmaskResponse].to_bytes())
    data[index % len(data)] ^= 1 << bit
    try:
        parse_message(bytes(data))
    except SecAggError:
        pass


def test_round_params_round_trip_and_strictness():
    params = RoundParams("fed-1:r3:a0", 3, 100, fixed_point_for_bound(2.0, 5), colluders=1)
    assert RoundParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    assert RoundParams.from_dict(params.to_dict()).digest() == params.digest()
    assert RoundParams("fed-1:r3:a0", 4, 100, params.encoding, colluders=1).digest() != params.digest()
    assert RoundParams("fed-1:r3:a0", 3, 100, params.encoding).digest() != params.digest()
    for bad in (
        {**params.to_dict(), "threshold": 1},
        {**params.to_dict(), "vector_length": 0},
        {**params.to_dict(), "colluders": 3},  # m must be above t
        {**params.to_dict(), "colluders": -1},
        {**params.to_dict(), "graph_degree": 4},  # only the complete graph exists
        {**params.to_dict(), "round_id": "has space"},
        {**params.to_dict(), "unknown": 1},
    ):
        with pytest.raises(SecAggError):
            RoundParams.from_dict(bad)
