"""Secure aggregation: the coordinator learns the sum of the hospitals' vectors and nothing else.

Pairwise masking with dropout recovery after Bonawitz et al. (CCS 2017), with their consistency
check, on the complete graph only. Transport-free: plain state machines and message dataclasses,
no I/O. ``core.federation`` carries the messages over HTTPS.

Public API (everything below is importable from ``core.secagg``)
================================================================

Round parameters (every party derives them from the federation plan and its signed roster; a
hospital refuses a round whose announced parameters differ)::

    FixedPoint(scale: float, bound: float, bits: int = 32)          # frozen dataclass
        .max_hospitals() -> int (the most vectors whose sum cannot wrap); .dtype
        .to_dict() -> dict; FixedPoint.from_dict(d) -> FixedPoint    (SecAggError on bad input)
    derive_encoding(*, max_grad_norm, max_batch_size, noise_std, num_hospitals, bits=32, tail_sigmas=7.0)
        bound = max_grad_norm * max_batch_size + tail_sigmas * noise_std   (per coordinate)
        scale = (2**(bits-1) - 1 - num_hospitals) / (num_hospitals * bound)
    fixed_point_for_bound(bound, num_hospitals, bits=32) -> FixedPoint   # same rule, bound given
    encode(values, spec) -> tuple[np.ndarray, int]   # (uint32/uint64 ring vector, n clipped)
    decode(ring_sum, spec) -> np.ndarray[float64]

    RoundParams(round_id: str, threshold: int, vector_length: int, encoding: FixedPoint,
                colluders: int = 0)                                   # frozen dataclass
        .to_dict() / RoundParams.from_dict(d);  .digest() -> bytes (32, signed into messages)
        round_id: 1-128 chars of [A-Za-z0-9._:-]; unique per round attempt.
        threshold m (>= 2): the sum is released only over >= m hospitals, else SecAggAborted.
        colluders t: hospitals that may collude with the coordinator. Both state machines refuse
            to run unless 2m > K + t and m > t, K = the hospitals in peer_keys (check_threshold_rule).

Hospital ids: 1-64 chars of [A-Za-z0-9._-]; "coordinator" is reserved.

Hospital side, one object per hospital per round (call the methods in this order)::

    client = SecAggClient(params, hospital_id, identity_key: Ed25519PrivateKey,
                          peer_keys: Mapping[str, bytes])   # the federation's signed roster
    client.advertise() -> AdvertiseKeys                       # 1. upload
    client.share_keys(roster: KeyRoster) -> EncryptedShares   # 2. upload
    client.mask_input(bundle: ShareBundle, values) -> MaskedInput   # 3. upload (clip, encode, mask)
    client.mask_encoded(bundle, ring_vector) -> MaskedInput   # 3'. if you encoded yourself
    client.sign_survivors(survivors: SurvivorSet) -> SurvivorSignature   # 4. consistency check
    client.unmask(request: UnmaskRequest) -> UnmaskResponse   # 5. upload
    client.phase -> "new" | "advertised" | "shared" | "masked" | "signed" | "done"

Coordinator side, one object per round; each ``close_*`` is called when the coordinator stops
waiting (deadline or everyone answered)::

    server = SecAggServer(params, peer_keys)
    server.receive_advertise(msg); server.close_advertise() -> KeyRoster        # to every advertiser
    server.receive_shares(msg); server.close_sharing() -> dict[str, ShareBundle]
    server.receive_masked_input(msg); server.close_masking() -> SurvivorSet     # to every masker
    server.receive_survivor_signature(msg); server.close_consistency() -> UnmaskRequest
    server.receive_unmask(msg); server.finish() -> AggregateResult(ring_sum, values, included, dropped)
    server.abort()                                          # wipes the round's state

Every ``receive_*`` raises SecAggError for a message it refuses (wrong round, unknown or repeated
sender, bad signature, wrong phase, wrong size) and leaves the state unchanged. Every
``close_*``/``finish`` raises SecAggAborted (state wiped, nothing revealed) when fewer than m
hospitals are left.

Dropout semantics: a hospital that never sends its masked input is excluded from the sum; one that
sent it and then vanished is included (its self mask is rebuilt from the others' shares).

Security against a lying coordinator (DESIGN.md section 7): every hospital message is signed with
its Ed25519 identity key, and only keys of the signed roster count. Each hospital signs the one
survivor set it is shown, and reveals shares only for that set, after at least m survivors signed
exactly it; for any peer it reveals either the self-mask share or the key share, never both. With
2m > K + t no coordinator, even with t hospitals, can collect both secrets of one hospital or
release a sum over fewer than m (tests/adversary/test_lying_coordinator.py plays these attacks).

Messages: AdvertiseKeys, KeyRoster, EncryptedShares, ShareBundle, MaskedInput, SurvivorSet,
SurvivorSignature, UnmaskRequest, UnmaskResponse. ``msg.to_bytes()``, ``Cls.from_bytes(data)``,
``parse_message(data)``. Wire format: b"DSA1" + uint32 LE header length + JSON header + raw
little-endian arrays. Parsing is strict; hostile input raises SecAggError. Never pickle.

In-memory driver (tests, benchmarks)::

    simulate(inputs, threshold, *, drop_before_masking=(), drop_after_masking=(), bits=32,
             colluders=0, ...) -> np.ndarray[float64]
    run_round(params, inputs, *, encoded=False, drop_...=(), identity_keys=None,
              on_upload=None, pairwise_once=True) -> AggregateResult
"""

from core.secagg.client import SecAggClient
from core.secagg.encoding import FixedPoint, decode, derive_encoding, encode, fixed_point_for_bound
from core.secagg.messages import (
    AdvertiseKeys,
    EncryptedShares,
    KeyRoster,
    MaskedInput,
    Message,
    ShareBundle,
    SurvivorSet,
    SurvivorSignature,
    UnmaskRequest,
    UnmaskResponse,
    parse_message,
)
from core.secagg.params import COORDINATOR, RoundParams
from core.secagg.server import AggregateResult, SecAggServer
from core.secagg.simulate import run_round, simulate

__all__ = [
    "COORDINATOR",
    "AdvertiseKeys",
    "AggregateResult",
    "EncryptedShares",
    "FixedPoint",
    "KeyRoster",
    "MaskedInput",
    "Message",
    "RoundParams",
    "SecAggClient",
    "SecAggServer",
    "ShareBundle",
    "SurvivorSet",
    "SurvivorSignature",
    "UnmaskRequest",
    "UnmaskResponse",
    "decode",
    "derive_encoding",
    "encode",
    "fixed_point_for_bound",
    "parse_message",
    "run_round",
    "simulate",
]
