"""The coordinator's side of one secure-aggregation round (a state machine, no I/O).

Masked vectors are added into one running ring sum as they arrive and never kept, so memory
is one vector plus per-hospital keys and shares, whatever the number of hospitals.
"""

from __future__ import annotations

from collections.abc import Container, Mapping, Set
from dataclasses import dataclass

import numpy as np

from core.errors import SecAggAborted, SecAggError
from core.secagg import shamir
from core.secagg.crypto import verify, x25519_from_private_bytes
from core.secagg.encoding import decode
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
    survivor_fields,
    vector_digest,
)
from core.secagg.params import RoundParams, check_threshold_rule
from core.secagg.prg import MaskExpander
from core.secagg.roster import Roster, check_advert, check_peer_keys, pairwise_seed, self_mask_digest

ADVERTISING, SHARING, MASKING, CONSISTENCY, UNMASKING, DONE, ABORTED = (
    "advertising",
    "sharing",
    "masking",
    "consistency",
    "unmasking",
    "done",
    "aborted",
)


@dataclass(frozen=True, eq=False)
class AggregateResult:
    """The released sum: over ``included`` (hospitals whose masked input arrived)."""

    ring_sum: np.ndarray
    values: np.ndarray
    included: tuple[str, ...]
    dropped: tuple[str, ...]


class SecAggServer:
    """The coordinator in one round. See core.secagg for the order of calls."""

    def __init__(self, params: RoundParams, peer_keys: Mapping[str, bytes]) -> None:
        if not isinstance(params, RoundParams):
            raise SecAggError("Secure-aggregation server needs RoundParams.")
        self.params = params
        self._peer_keys = check_peer_keys(peer_keys)
        check_threshold_rule(params.threshold, len(self._peer_keys), params.colluders)
        if len(self._peer_keys) > params.encoding.max_hospitals():
            raise SecAggError(
                f"The encoding allows summing {params.encoding.max_hospitals()} hospitals without overflow, "
                f"but {len(self._peer_keys)} are enrolled; derive the encoding for this many hospitals."
            )
        self.phase = ADVERTISING
        self._adverts: dict[str, AdvertiseKeys] = {}
        self._roster: Roster | None = None
        self._shares: dict[str, EncryptedShares] = {}
        self._commitments: dict[str, bytes] = {}
        self._sum: np.ndarray | None = None
        self._masked: set[str] = set()
        self._survivor_set: SurvivorSet | None = None
        self._survivor_signatures: dict[str, bytes] = {}
        self._request: UnmaskRequest | None = None
        self._seed_shares: dict[str, dict[int, int]] = {}
        self._key_shares: dict[str, dict[int, int]] = {}
        self._responded: set[str] = set()

    @property
    def advertised(self) -> frozenset[str]:
        return frozenset(self._adverts)

    @property
    def shared(self) -> frozenset[str]:
        return frozenset(self._shares) if self.phase == SHARING else frozenset(self._commitments)

    @property
    def masked(self) -> frozenset[str]:
        return frozenset(self._masked)

    @property
    def signed(self) -> frozenset[str]:
        return frozenset(self._survivor_signatures)

    @property
    def responded(self) -> frozenset[str]:
        return frozenset(self._responded)

    def _check(
        self, message: Message, cls: type[Message], phase: str, allowed: Set[str], seen: Container[str]
    ) -> None:
        if not isinstance(message, cls):
            raise SecAggError(f"Refused a message: expected {cls.__name__}.")
        if message.round_id != self.params.round_id:
            raise SecAggError(
                f"Refused a {cls.__name__} from {message.sender}: it is for round {message.round_id}, "
                f"not {self.params.round_id}."
            )
        if self.phase != phase:
            raise SecAggError(
                f"Refused a {cls.__name__} from {message.sender}: the round is at step '{self.phase}'."
            )
        if message.sender not in allowed:
            raise SecAggError(
                f"Refused a {cls.__name__} from {message.sender}: it is not a participant of this step."
            )
        if message.sender in seen:
            raise SecAggError(f"Refused a repeated {cls.__name__} from {message.sender} (replay or resend).")

    def _closing(self, phase: str) -> None:
        if self.phase != phase:
            raise SecAggError(
                f"Secure aggregation cannot close step '{phase}': the round is at step '{self.phase}'."
            )

    def _need(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            self.abort()
            raise SecAggAborted(
                f"Secure aggregation aborted: only {count} hospitals {what}, {self.params.threshold} needed; "
                "nothing was revealed. Start a new round."
            )

    def abort(self) -> None:
        """End the round without revealing anything: the running sum and all shares are wiped."""
        if self._sum is not None:
            self._sum.fill(0)
        self._sum = None
        self._shares.clear()
        self._seed_shares.clear()
        self._key_shares.clear()
        self.phase = ABORTED

    # Phase 1 ---------------------------------------------------------------------------------
    def receive_advertise(self, message: AdvertiseKeys) -> None:
        self._check(message, AdvertiseKeys, ADVERTISING, self._peer_keys.keys(), self._adverts)
        check_advert(message, self.params, self._peer_keys)
        self._adverts[message.sender] = message

    def close_advertise(self) -> KeyRoster:
        self._closing(ADVERTISING)
        self._need(len(self._adverts), "advertised keys")
        roster = KeyRoster(self.params.round_id, tuple(self._adverts[h] for h in sorted(self._adverts)))
        try:
            self._roster = Roster(self.params, roster.adverts)
        except SecAggError as exc:
            self.abort()
            raise SecAggAborted(f"Secure aggregation aborted: {exc}") from exc
        self.phase = SHARING
        return roster

    # Phase 2 ---------------------------------------------------------------------------------
    def receive_shares(self, message: EncryptedShares) -> None:
        self._check(message, EncryptedShares, SHARING, self._adverts.keys(), self._shares)
        assert self._roster is not None  # set when the round entered SHARING
        expected = self._roster.peers[message.sender]
        if set(message.ciphertexts) != expected:
            raise SecAggError(
                f"Refused the shares of {message.sender}: they are not addressed to exactly its neighbours."
            )
        if not verify(self._peer_keys[message.sender], message.signature, *message.signed_fields()):
            raise SecAggError(
                f"Refused the shares of {message.sender}: the signature does not match its identity."
            )
        self._shares[message.sender] = message

    def close_sharing(self) -> dict[str, ShareBundle]:
        self._closing(SHARING)
        self._need(len(self._shares), "shared their keys")
        bundles = {
            recipient: ShareBundle(
                self.params.round_id,
                recipient,
                {
                    sender: message.ciphertexts[recipient]
                    for sender, message in sorted(self._shares.items())
                    if recipient in message.ciphertexts
                },
            )
            for recipient in sorted(self._shares)
        }
        self._commitments = {sender: message.self_mask_digest for sender, message in self._shares.items()}
        self._shares.clear()
        self._sum = np.zeros(self.params.vector_length, self.params.encoding.dtype)
        self.phase = MASKING
        return bundles

    # Phase 3 ---------------------------------------------------------------------------------
    def receive_masked_input(self, message: MaskedInput) -> None:
        self._check(message, MaskedInput, MASKING, self._commitments.keys(), self._masked)
        ring_sum = self._sum
        assert ring_sum is not None  # set when the round entered MASKING
        vector = message.vector
        if (
            not isinstance(vector, np.ndarray)
            or vector.dtype != ring_sum.dtype
            or vector.shape != ring_sum.shape
        ):
            raise SecAggError(
                f"Refused the input of {message.sender}: expected {self.params.vector_length} values of "
                f"{ring_sum.dtype.name}."
            )
        if not verify(
            self._peer_keys[message.sender], message.signature, *message.signed_fields(vector_digest(vector))
        ):
            raise SecAggError(
                f"Refused the input of {message.sender}: the signature does not match its identity."
            )
        np.add(ring_sum, vector, out=ring_sum)
        self._masked.add(message.sender)

    def close_masking(self) -> SurvivorSet:
        self._closing(MASKING)
        self._need(len(self._masked), "sent their masked inputs")
        self._survivor_set = SurvivorSet(
            self.params.round_id,
            survivors=tuple(sorted(self._masked)),
            dropped=tuple(sorted(set(self._commitments) - self._masked)),
        )
        self.phase = CONSISTENCY
        return self._survivor_set

    # Phase 4: consistency check -------------------------------------------------------------
    def receive_survivor_signature(self, message: SurvivorSignature) -> None:
        self._check(message, SurvivorSignature, CONSISTENCY, self._masked, self._survivor_signatures)
        survivor_set = self._survivor_set
        assert survivor_set is not None  # set when the round entered CONSISTENCY
        fields = survivor_fields(self.params.round_id, survivor_set.survivors, survivor_set.dropped)
        if not verify(self._peer_keys[message.sender], message.signature, *fields):
            raise SecAggError(
                f"Refused the survivor-set signature of {message.sender}: it does not sign this round's survivor set."
            )
        self._survivor_signatures[message.sender] = message.signature

    def close_consistency(self) -> UnmaskRequest:
        self._closing(CONSISTENCY)
        self._need(len(self._survivor_signatures), "signed the survivor set")
        survivor_set = self._survivor_set
        assert survivor_set is not None  # set when the round entered CONSISTENCY
        self._request = UnmaskRequest(
            self.params.round_id,
            survivors=survivor_set.survivors,
            dropped=survivor_set.dropped,
            signatures=dict(sorted(self._survivor_signatures.items())),
        )
        self.phase = UNMASKING
        return self._request

    # Phase 5 ---------------------------------------------------------------------------------
    def receive_unmask(self, message: UnmaskResponse) -> None:
        self._check(message, UnmaskResponse, UNMASKING, self._survivor_signatures.keys(), self._responded)
        request, roster = self._request, self._roster
        assert request is not None and roster is not None  # both set before the round entered UNMASKING
        if set(message.seed_shares) != set(request.survivors) or set(message.key_shares) != set(
            request.dropped
        ):
            raise SecAggError(
                f"Refused the unmasking answer of {message.sender}: it does not answer the request."
            )
        if not verify(self._peer_keys[message.sender], message.signature, *message.signed_fields()):
            raise SecAggError(
                f"Refused the unmasking answer of {message.sender}: the signature does not match."
            )
        x = roster.position[message.sender]
        for owner, value in message.seed_shares.items():
            self._seed_shares.setdefault(owner, {})[x] = value
        for owner, value in message.key_shares.items():
            self._key_shares.setdefault(owner, {})[x] = value
        self._responded.add(message.sender)

    def _rebuild(self, shares: dict[str, dict[int, int]], owner: str, what: str) -> bytes:
        held = shares.get(owner, {})
        needed = self.params.threshold
        if len(held) < needed:
            raise SecAggAborted(
                f"Secure aggregation aborted: only {len(held)} hospitals returned the {what} of {owner}, "
                f"{needed} needed; nothing was revealed. Start a new round."
            )
        return shamir.reconstruct(held, needed)

    def finish(self) -> AggregateResult:
        """Remove every mask and release the sum over the survivors (or abort, revealing nothing)."""
        if self.phase != UNMASKING:
            raise SecAggError(f"Secure aggregation cannot finish at step '{self.phase}'.")
        self._need(len(self._responded), "answered the unmasking request")
        round_id, roster, request, ring_sum = self.params.round_id, self._roster, self._request, self._sum
        assert roster is not None and request is not None and ring_sum is not None  # set before UNMASKING
        survivors, dropped = request.survivors, request.dropped
        try:
            # Every secret is rebuilt and checked before the sum is touched.
            self_seeds = []
            for owner in survivors:
                seed = self._rebuild(self._seed_shares, owner, "self-mask shares")
                if self_mask_digest(round_id, owner, seed) != self._commitments[owner]:
                    raise SecAggError(f"the self-mask shares of {owner} do not match its commitment")
                self_seeds.append(seed)
            add: list[bytes] = []
            subtract: list[bytes] = []
            for owner in dropped:
                key, public = x25519_from_private_bytes(self._rebuild(self._key_shares, owner, "key shares"))
                if public != roster.adverts[owner].mask_public:
                    raise SecAggError(f"the key shares of {owner} do not match its advertised key")
                for peer in sorted(roster.peers[owner] & set(survivors)):
                    # The survivor added +mask when its id sorts first, so undo with the opposite sign.
                    seed = pairwise_seed(key, roster.adverts[peer].mask_public, round_id, peer, owner)
                    (subtract if peer < owner else add).append(seed)
        except SecAggAborted:
            self.abort()
            raise
        except SecAggError as exc:
            self.abort()
            raise SecAggAborted(f"Secure aggregation aborted: {exc}; nothing was revealed.") from exc
        expander = MaskExpander(ring_sum.shape[0], ring_sum.dtype)
        expander.apply(ring_sum, add=add, subtract=self_seeds + subtract)
        self._sum = None
        self._seed_shares.clear()
        self._key_shares.clear()
        self.phase = DONE
        return AggregateResult(ring_sum, decode(ring_sum, self.params.encoding), survivors, dropped)
