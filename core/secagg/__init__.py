"""Secure aggregation: the coordinator learns the sum of the hospitals' vectors and nothing else.

Pairwise masking with dropout recovery after Bonawitz et al. (CCS 2017), with the sparse
neighbour graph of Bell et al. (CCS 2020) as an option. Transport-free: plain state machines
and message dataclasses, no I/O. ``core.federation`` carries the messages over HTTPS.

Public API (everything below is importable from ``core.secagg``)
================================================================

Round parameters (the coordinator chooses them and sends them to every hospital; both sides
construct their state machine from the same value)::

    FixedPoint(scale: float, bound: float, bits: int = 32)          # frozen dataclass
        .max_hospitals() -> int (the most vectors whose sum cannot wrap); .dtype
        .to_dict() -> dict; FixedPoint.from_dict(d) -> FixedPoint    (SecAggError on bad input)
    derive_encoding(*, max_grad_norm: float, max_batch_size: int, noise_std: float,
                    num_hospitals: int, bits: int = 32, tail_sigmas: float = 7.0) -> FixedPoint
        bound = max_grad_norm * max_batch_size + tail_sigmas * noise_std   (per coordinate)
        scale = (2**(bits-1) - 1 - num_hospitals) / (num_hospitals * bound)
        (for bits=64 the scale is further capped so that bound * scale <= 2**42.)
        Each hospital's encoded |value| <= bound*scale + 1, so the sum of K encoded values
        stays below 2**(bits-1) in magnitude: the ring sum never wraps.
    fixed_point_for_bound(bound, num_hospitals, bits=32) -> FixedPoint   # same rule, bound given
    encode(values, spec) -> tuple[np.ndarray, int]   # (uint32/uint64 ring vector, n clipped)
    decode(ring_sum, spec) -> np.ndarray[float64]

    RoundParams(round_id: str, threshold: int, vector_length: int, encoding: FixedPoint,
                graph_degree: int | None = None, graph_seed: bytes = b"")   # frozen dataclass
        .to_dict() / RoundParams.from_dict(d);  .digest() -> bytes (32, signed into messages)
        round_id: 1-128 chars of [A-Za-z0-9._:-]; must be unique per round (e.g. "fed1:round:7").
        threshold m (>= 2): the sum is released only over >= m hospitals, else SecAggAborted.
            Choose m > K/2 (m > 2K/3 if the coordinator might lie to hospitals).
        graph_degree: None -> complete graph; k -> each hospital masks with and shares its secrets
            with 2*ceil(k/2) neighbours of a random graph derived from graph_seed (public; b"" ->
            derived from round_id) and the advertised ids, so every party computes the same graph.
            Each hospital's secrets then need a strict majority of its neighbours+itself to rebuild.

Hospital ids: 1-64 chars of [A-Za-z0-9._-]; "coordinator" is reserved (sender of the
coordinator's messages).

Hospital side, one object per hospital per round (call the methods in this order)::

    client = SecAggClient(params, hospital_id, identity_key: Ed25519PrivateKey,
                          peer_keys: Mapping[str, bytes])   # id -> raw Ed25519 public key (32 B)
    client.advertise() -> AdvertiseKeys                       # 1. upload
    client.share_keys(roster: KeyRoster) -> EncryptedShares   # 2. upload
    client.mask_input(bundle: ShareBundle, values: np.ndarray) -> MaskedInput   # 3. upload
        (values: float vector of params.vector_length; clipped to the bound, encoded with
         stochastic rounding; client.clipped says how many coordinates were clipped)
    client.mask_encoded(bundle, ring_vector) -> MaskedInput   # 3'. if you encoded yourself
    client.unmask(request: UnmaskRequest) -> UnmaskResponse   # 4. upload
    client.phase -> str ("new", "advertised", "shared", "masked", "done")
    client.clipped -> int   (coordinates clipped by the last mask_input)

Coordinator side, one object per round; each `close_*` is called when the coordinator stops
waiting (deadline or everyone answered)::

    server = SecAggServer(params, peer_keys: Mapping[str, bytes])
    server.receive_advertise(msg: AdvertiseKeys) -> None
    server.close_advertise() -> KeyRoster                   # broadcast to every advertiser
    server.receive_shares(msg: EncryptedShares) -> None
    server.close_sharing() -> dict[str, ShareBundle]        # one bundle per hospital id
    server.receive_masked_input(msg: MaskedInput) -> None   # streamed into a running sum
    server.close_masking() -> UnmaskRequest                 # broadcast to every masker
    server.receive_unmask(msg: UnmaskResponse) -> None
    server.finish() -> AggregateResult(ring_sum, values: float64, included, dropped)
    server.abort() -> None                                  # wipes the round's state
    server.phase, server.advertised, server.shared, server.masked, server.responded

Every ``receive_*`` raises SecAggError for a message it refuses (wrong round, unknown or
repeated sender, bad signature, wrong phase, wrong size) and leaves the state unchanged, so
the transport can answer 4xx and carry on. Every ``close_*``/``finish`` raises SecAggAborted
(state wiped, nothing revealed) when fewer than ``threshold`` hospitals are left.

Dropout semantics: a hospital that never sends its masked input is excluded from the sum; one
that sent it and then vanished is included (its self mask is rebuilt from the others' shares).

Every hospital message is signed with its Ed25519 identity key (a MaskedInput over the SHA-256
of its vector), so the transport may log it as the hospital's own statement of what it sent.

Messages (dataclasses; every one has ``round_id`` and ``sender``)::

    AdvertiseKeys, KeyRoster, EncryptedShares, ShareBundle, MaskedInput, UnmaskRequest,
    UnmaskResponse
    msg.to_bytes() -> bytes;  Cls.from_bytes(data) -> Cls;  parse_message(data) -> message
    Wire format: b"DSA1" + uint32 LE header length + JSON header + raw little-endian arrays.
    Parsing is strict (sizes, types, ids); hostile input raises SecAggError. Never pickle.

Sizes: a MaskedInput is vector_length * bits/8 bytes plus a header under 300 bytes; every other
message is a few hundred bytes per hospital in the round.

In-memory driver (tests, benchmarks)::

    simulate(inputs, threshold, *, drop_before_masking=(), drop_after_masking=(), bits=32,
             graph_degree=None, drop_before_advertising=(), drop_before_sharing=(),
             encoding=None, round_id=...) -> np.ndarray[float64]
        drops are hospital indices; every message travels through its wire bytes.
    run_round(params, inputs, *, encoded=False, drop_...=(), identity_keys=None,
              on_upload=None, pairwise_once=True) -> AggregateResult   # your own RoundParams
        pairwise_once expands each pair's mask once for both hospitals (same bytes as each
        hospital's mask_encoded; only possible in one process).

Security notes: the coordinator is assumed honest but curious (DESIGN.md section 7). Each
hospital answers one unmasking request per round and refuses one that lists a peer as both
dropped and alive, so with m > K/2 (and a strict majority per neighbourhood in the sparse
graph) no coordinator can collect both secrets of one hospital. Messages from the coordinator
are not signed here: their content is checked (signed adverts, authenticated ciphertexts,
consistent lists) and the transport (HTTPS with a pinned CA) authenticates the coordinator.
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
