"""Whole rounds in memory: every message goes through its wire bytes, as over the network."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import SecAggError
from core.secagg.client import SecAggClient
from core.secagg.crypto import ed25519_public_bytes
from core.secagg.encoding import FixedPoint, encode, fixed_point_for_bound
from core.secagg.messages import MaskedInput, Message, ShareBundle
from core.secagg.params import RoundParams
from core.secagg.prg import MaskExpander
from core.secagg.server import AggregateResult, SecAggServer


def hospital_ids(count: int) -> list[str]:
    return [f"h{index:03d}" for index in range(count)]


_M = TypeVar("_M", bound=Message)


def _wire(message: _M) -> _M:
    return type(message).from_bytes(message.to_bytes())


def mask_together(
    clients: Sequence[SecAggClient], bundles: Sequence[ShareBundle], rings: Sequence[np.ndarray]
) -> list[MaskedInput]:
    """What each client's mask_encoded returns, expanding every distinct seed once.

    Two hospitals of a pair derive the same pairwise seed (one adds its mask, the other
    subtracts it), so in one process each pairwise mask is expanded once and applied to both
    vectors. The masked vectors are bit for bit those of mask_encoded.
    """
    plans = [
        client._plan_masks(bundle, ring) for client, bundle, ring in zip(clients, bundles, rings, strict=True)
    ]
    if not plans:
        return []
    outputs = [np.empty_like(plan.ring) for plan in plans]
    uses: dict[bytes, list[tuple[np.ndarray, bool]]] = {}
    for plan, output in zip(plans, outputs, strict=True):
        for seed in plan.add:
            uses.setdefault(seed, []).append((output, True))
        for seed in plan.subtract:
            uses.setdefault(seed, []).append((output, False))
    MaskExpander(outputs[0].shape[0], outputs[0].dtype).apply_many(
        list(uses.items()), starts=[(output, plan.ring) for plan, output in zip(plans, outputs, strict=True)]
    )
    return [
        client._sign_masked(plan, output)
        for client, plan, output in zip(clients, plans, outputs, strict=True)
    ]


def run_round(
    params: RoundParams,
    inputs: Sequence[np.ndarray],
    *,
    encoded: bool = False,
    drop_before_advertising: Collection[int] = (),
    drop_before_sharing: Collection[int] = (),
    drop_before_masking: Collection[int] = (),
    drop_after_masking: Collection[int] = (),
    identity_keys: Sequence[Ed25519PrivateKey] | None = None,
    on_upload: Callable[[str, bytes], None] | None = None,
    pairwise_once: bool = True,
) -> AggregateResult:
    """One round over hospitals ``h000``.. (hospital i gets inputs[i]); drops are hospital indices.

    ``encoded`` inputs are ring vectors (mask_encoded) instead of floats. ``on_upload(id, bytes)``
    sees every hospital's upload (for measuring traffic). ``pairwise_once`` expands each pairwise
    mask once for both hospitals of the pair (mask_together); False runs each hospital's own
    mask_input/mask_encoded, as on separate machines. The result is the same.
    """
    ids = hospital_ids(len(inputs))
    keys = list(identity_keys) if identity_keys is not None else [Ed25519PrivateKey.generate() for _ in ids]
    peers = {hospital: ed25519_public_bytes(key) for hospital, key in zip(ids, keys, strict=True)}
    server = SecAggServer(params, peers)
    clients = {
        hospital: SecAggClient(params, hospital, key, peers) for hospital, key in zip(ids, keys, strict=True)
    }

    def upload(hospital: str, message: _M) -> _M:
        data = message.to_bytes()
        if on_upload is not None:
            on_upload(hospital, data)
        return type(message).from_bytes(data)

    def present(dropouts: Collection[int], among: Collection[str]) -> list[str]:
        gone = {ids[i] for i in dropouts}
        return [hospital for hospital in ids if hospital in among and hospital not in gone]

    alive = present(drop_before_advertising, ids)
    for hospital in alive:
        server.receive_advertise(upload(hospital, clients[hospital].advertise()))
    roster = _wire(server.close_advertise())

    alive = present(drop_before_sharing, alive)
    for hospital in alive:
        server.receive_shares(upload(hospital, clients[hospital].share_keys(roster)))
    bundles = {hospital: _wire(bundle) for hospital, bundle in server.close_sharing().items()}

    alive = present(drop_before_masking, alive)
    if pairwise_once:
        rings = []
        for hospital in alive:
            vector = inputs[ids.index(hospital)]
            if not encoded:
                vector, clipped = encode(vector, params.encoding)
                clients[hospital].clipped = clipped
            rings.append(vector)
        masked_inputs = mask_together([clients[h] for h in alive], [bundles[h] for h in alive], rings)
    else:
        masked_inputs = [
            clients[h].mask_encoded(bundles[h], inputs[ids.index(h)])
            if encoded
            else clients[h].mask_input(bundles[h], inputs[ids.index(h)])
            for h in alive
        ]
    for hospital, masked in zip(alive, masked_inputs, strict=True):
        server.receive_masked_input(upload(hospital, masked))
    survivor_set = _wire(server.close_masking())

    alive = present(drop_after_masking, alive)
    for hospital in alive:
        server.receive_survivor_signature(upload(hospital, clients[hospital].sign_survivors(survivor_set)))
    request = _wire(server.close_consistency())
    for hospital in alive:
        server.receive_unmask(upload(hospital, clients[hospital].unmask(request)))
    return server.finish()


def simulate(
    inputs: Sequence[np.ndarray],
    threshold: int,
    *,
    drop_before_masking: Collection[int] = (),
    drop_after_masking: Collection[int] = (),
    bits: int = 32,
    colluders: int = 0,
    drop_before_advertising: Collection[int] = (),
    drop_before_sharing: Collection[int] = (),
    encoding: FixedPoint | None = None,
    round_id: str = "simulation:round:0",
) -> np.ndarray:
    """The decoded float sum over the included hospitals of one in-memory round.

    Hospital i gets inputs[i]; drops name hospital indices (``drop_after_masking``: gone after the
    masked upload, before the consistency check). Without ``encoding`` the bound is the
    largest |value| in the inputs (nothing is clipped) and the scale the largest that cannot wrap.
    Raises SecAggAborted when fewer than ``threshold`` hospitals remain.
    """
    vectors = [np.asarray(vector, dtype=np.float64) for vector in inputs]
    if not vectors or any(v.ndim != 1 or v.shape != vectors[0].shape for v in vectors):
        raise SecAggError("simulate() needs one 1-D float vector of the same length per hospital.")
    if encoding is None:
        bound = max(float(np.max(np.abs(v))) for v in vectors) or 1.0
        encoding = fixed_point_for_bound(bound, len(vectors), bits)
    params = RoundParams(round_id, threshold, vectors[0].shape[0], encoding, colluders=colluders)
    result = run_round(
        params,
        vectors,
        drop_before_advertising=drop_before_advertising,
        drop_before_sharing=drop_before_sharing,
        drop_before_masking=drop_before_masking,
        drop_after_masking=drop_after_masking,
    )
    return result.values
