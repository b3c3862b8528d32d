"""The hospital's side of one secure-aggregation round (a state machine, no I/O)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import SecAggAborted, SecAggError
from core.secagg import shamir
from core.secagg.crypto import (
    ed25519_public_bytes,
    new_x25519,
    seal,
    sign,
    unseal,
    verify,
    x25519_private_bytes,
)
from core.secagg.encoding import encode
from core.secagg.messages import (
    SHARE_PLAINTEXT_BYTES,
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
from core.secagg.params import COORDINATOR, RoundParams, check_hospital_id, check_threshold_rule
from core.secagg.prg import SEED_BYTES, MaskExpander
from core.secagg.roster import (
    Roster,
    check_advert,
    check_peer_keys,
    pairwise_seed,
    self_mask_digest,
    share_associated_data,
    share_key,
)

NEW, ADVERTISED, SHARED, MASKED, SIGNED, DONE = "new", "advertised", "shared", "masked", "signed", "done"


@dataclass
class MaskPlan:
    """What masking one vector takes: y = ring + sum(mask(s) for s in add) - sum(mask(s) for s in subtract).

    add[0] is the self-mask seed; the rest are pairwise seeds, each shared with one peer (who
    holds the same seed with the opposite sign).
    """

    ring: np.ndarray
    held: dict[str, tuple[int, int]]
    add: list[bytes]
    subtract: list[bytes]


class SecAggClient:
    """One hospital in one round. Call advertise, share_keys, mask_input, sign_survivors, unmask in order.

    ``peer_keys`` are the Ed25519 keys of every hospital that may take part (the federation's frozen,
    signed roster): nobody else's keys or shares are accepted, and the round is refused unless
    2m > K + t for those K hospitals. Each step runs once (the transport resends the bytes it got,
    it does not call again). A refused input raises SecAggError and leaves the state as it was;
    nothing secret has left.
    """

    def __init__(
        self,
        params: RoundParams,
        hospital_id: str,
        identity_key: Ed25519PrivateKey,
        peer_keys: Mapping[str, bytes],
    ) -> None:
        if not isinstance(params, RoundParams):
            raise SecAggError("Secure-aggregation client needs RoundParams.")
        if not isinstance(identity_key, Ed25519PrivateKey):
            raise SecAggError("Secure-aggregation client needs the hospital's Ed25519 identity key.")
        self.params = params
        self.hospital_id = check_hospital_id(hospital_id)
        self._identity = identity_key
        self._peer_keys = check_peer_keys(peer_keys)
        own = ed25519_public_bytes(identity_key)
        if self._peer_keys.setdefault(hospital_id, own) != own:
            raise SecAggError(
                f"The identity key of {hospital_id} does not match its enrolled key; re-enroll."
            )
        check_threshold_rule(params.threshold, len(self._peer_keys), params.colluders)
        self._enc_key, self._enc_public = new_x25519()
        self._mask_key, self._mask_public = new_x25519()
        self._self_seed = os.urandom(SEED_BYTES)
        self._roster: Roster | None = None
        self._own_shares: tuple[int, int] | None = (
            None  # (key share, seed share) this hospital holds of itself
        )
        self._held: dict[str, tuple[int, int]] = {}  # sender -> (key share, seed share), after mask_input
        self._share_keys: dict[str, bytes] = {}  # neighbour -> AES-GCM key for shares, both directions
        self._signed: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self.phase = NEW
        self.clipped = 0

    def _expect(self, phase: str, message: object, cls: type[Message], step: str) -> None:
        if not isinstance(message, cls):
            raise SecAggError(f"Secure aggregation {step}: expected a {cls.__name__}.")
        if message.round_id != self.params.round_id:
            raise SecAggError(
                f"Refused a message for round {message.round_id}: this hospital is in round {self.params.round_id}."
            )
        if message.sender != COORDINATOR:
            raise SecAggError(f"Refused a {cls.__name__} that does not come from the coordinator.")
        if self.phase != phase:
            raise SecAggError(
                f"Secure aggregation {step} is out of order (this hospital is at step '{self.phase}')."
            )

    def advertise(self) -> AdvertiseKeys:
        """Step 1: this round's two public keys, signed with the identity key."""
        if self.phase != NEW:
            raise SecAggError("Secure aggregation: keys were already advertised for this round.")
        unsigned = AdvertiseKeys(
            self.params.round_id,
            self.hospital_id,
            self.params.digest(),
            self._enc_public,
            self._mask_public,
            b"",
        )
        self.phase = ADVERTISED
        return dataclasses.replace(unsigned, signature=sign(self._identity, *unsigned.signed_fields()))

    def share_keys(self, roster: KeyRoster) -> EncryptedShares:
        """Step 2: check every advertised key, then send each neighbour its encrypted shares."""
        self._expect(ADVERTISED, roster, KeyRoster, "share_keys")
        for advert in roster.adverts:
            check_advert(advert, self.params, self._peer_keys)
        view = Roster(self.params, roster.adverts)
        me = self.hospital_id
        own = view.adverts.get(me)
        if own is None or (own.enc_public, own.mask_public) != (self._enc_public, self._mask_public):
            raise SecAggError("Refused the key roster: it does not hold this hospital's keys for the round.")
        if len(view.ids) > self.params.encoding.max_hospitals():
            raise SecAggError(
                f"Refused the key roster: {len(view.ids)} hospitals could overflow this round's encoding "
                f"(at most {self.params.encoding.max_hospitals()})."
            )
        if len(view.ids) < self.params.threshold:
            raise SecAggAborted(
                f"Secure aggregation aborted: only {len(view.ids)} hospitals joined the round, "
                f"{self.params.threshold} needed; nothing was revealed."
            )
        holders = sorted(view.holders)
        positions = [view.position[h] for h in holders]
        threshold = self.params.threshold
        key_shares = shamir.split(x25519_private_bytes(self._mask_key), threshold, positions)
        seed_shares = shamir.split(self._self_seed, threshold, positions)
        ciphertexts = {}
        for holder in holders:
            x = view.position[holder]
            if holder == me:
                self._own_shares = (key_shares[x], seed_shares[x])
                continue
            plaintext = (
                x.to_bytes(4, "big")
                + key_shares[x].to_bytes(shamir.SHARE_BYTES, "big")
                + seed_shares[x].to_bytes(shamir.SHARE_BYTES, "big")
            )
            key = share_key(self._enc_key, view.adverts[holder].enc_public, self.params.round_id, me, holder)
            self._share_keys[holder] = key  # the same key opens what this neighbour sends back
            ciphertexts[holder] = seal(
                key, plaintext, share_associated_data(self.params.round_id, me, holder)
            )
        unsigned = EncryptedShares(
            self.params.round_id,
            me,
            self_mask_digest(self.params.round_id, me, self._self_seed),
            ciphertexts,
            b"",
        )
        self._roster = view
        self.phase = SHARED
        return dataclasses.replace(unsigned, signature=sign(self._identity, *unsigned.signed_fields()))

    def _open_bundle(self, bundle: ShareBundle) -> dict[str, tuple[int, int]]:
        view, me = self._roster, self.hospital_id
        assert view is not None  # set by share_keys, before any bundle is accepted
        if bundle.recipient != me:
            raise SecAggError(f"Refused a share bundle addressed to {bundle.recipient}, not {me}.")
        neighbours = view.peers[me]
        x_mine = view.position[me]
        held = {}
        for sender, blob in bundle.ciphertexts.items():
            if sender not in neighbours:
                raise SecAggError(
                    f"Refused a share bundle: {sender} is not a neighbour of {me} in this round."
                )
            plaintext = unseal(
                self._share_keys[sender], blob, share_associated_data(self.params.round_id, sender, me)
            )
            if len(plaintext) != SHARE_PLAINTEXT_BYTES or int.from_bytes(plaintext[:4], "big") != x_mine:
                raise SecAggError(f"Refused the shares from {sender}: they were made for another holder.")
            key_share = int.from_bytes(plaintext[4 : 4 + shamir.SHARE_BYTES], "big")
            seed_share = int.from_bytes(plaintext[4 + shamir.SHARE_BYTES :], "big")
            if key_share >= shamir.PRIME or seed_share >= shamir.PRIME:
                raise SecAggError(f"Refused the shares from {sender}: a value is outside the field.")
            held[sender] = (key_share, seed_share)
        return held

    def mask_input(self, bundle: ShareBundle, values: np.ndarray) -> MaskedInput:
        """Step 3: clip and encode ``values`` (see FixedPoint), then mask and sign them."""
        self._expect(SHARED, bundle, ShareBundle, "mask_input")
        ring, clipped = encode(values, self.params.encoding)
        if ring.shape != (self.params.vector_length,):
            raise SecAggError(
                f"The update has {ring.shape[0]} values; this round expects {self.params.vector_length}."
            )
        message = self.mask_encoded(bundle, ring)
        self.clipped = clipped
        return message

    def mask_encoded(self, bundle: ShareBundle, ring_vector: np.ndarray) -> MaskedInput:
        """Step 3 for a vector already in the ring (uint32 or uint64 as the encoding says)."""
        plan = self._plan_masks(bundle, ring_vector)
        masked = np.empty_like(plan.ring)  # the only copy of the vector
        MaskExpander(masked.shape[0], masked.dtype).apply(masked, plan.add, plan.subtract, start=plan.ring)
        return self._sign_masked(plan, masked)

    def _plan_masks(self, bundle: ShareBundle, ring_vector: np.ndarray) -> MaskPlan:
        """Check the bundle and derive every mask seed; nothing changes until _sign_masked."""
        self._expect(SHARED, bundle, ShareBundle, "mask_input")
        spec = self.params.encoding
        ring = np.asarray(ring_vector)
        if ring.dtype != spec.dtype or ring.shape != (self.params.vector_length,):
            raise SecAggError(
                f"The encoded update must be {self.params.vector_length} values of {spec.dtype.name}; "
                f"got {ring.shape} {ring.dtype.name}."
            )
        held = self._open_bundle(bundle)
        view, me, round_id = self._roster, self.hospital_id, self.params.round_id
        assert view is not None  # set by share_keys, before any bundle is accepted
        alive = len(held) + 1
        if alive < self.params.threshold:
            raise SecAggAborted(
                f"Secure aggregation aborted: only {alive} hospitals shared keys with {me}, "
                f"{self.params.threshold} needed; nothing was revealed."
            )
        plan = MaskPlan(ring, held, add=[self._self_seed], subtract=[])
        for peer in held:
            seed = pairwise_seed(self._mask_key, view.adverts[peer].mask_public, round_id, me, peer)
            (plan.add if me < peer else plan.subtract).append(seed)
        return plan

    def _sign_masked(self, plan: MaskPlan, masked: np.ndarray) -> MaskedInput:
        unsigned = MaskedInput(self.params.round_id, self.hospital_id, masked, b"")
        signature = sign(self._identity, *unsigned.signed_fields(vector_digest(masked)))
        self._held = plan.held
        self.phase = MASKED
        return dataclasses.replace(unsigned, signature=signature)

    def sign_survivors(self, survivor_set: SurvivorSet) -> SurvivorSignature:
        """Step 4 (Bonawitz et al.'s consistency check): sign the survivor set this hospital was shown.

        A hospital signs one set per round and later reveals shares only for that set, so a
        coordinator cannot show different hospitals different survivor sets. Lists that name a
        hospital twice, leave out or drop this hospital, or name hospitals outside the round, or
        that hold fewer than m survivors, are refused before anything is signed.
        """
        self._expect(MASKED, survivor_set, SurvivorSet, "sign_survivors")
        self._check_lists(survivor_set.survivors, survivor_set.dropped)
        self._signed = (survivor_set.survivors, survivor_set.dropped)
        self.phase = SIGNED
        fields = survivor_fields(self.params.round_id, *self._signed)
        return SurvivorSignature(self.params.round_id, self.hospital_id, sign(self._identity, *fields))

    def _check_lists(self, survivors_list: tuple[str, ...], dropped_list: tuple[str, ...]) -> None:
        view, me = self._roster, self.hospital_id
        assert view is not None  # set by share_keys, before any survivor set is accepted
        survivors, dropped = set(survivors_list), set(dropped_list)
        both = survivors & dropped
        if both:
            raise SecAggError(
                f"Refused to unmask: the coordinator lists {sorted(both)[0]} as both dropped and alive "
                "(that would reveal its input)."
            )
        unknown = (survivors | dropped) - set(view.ids)
        if unknown:
            raise SecAggError(f"Refused to unmask: {sorted(unknown)[0]} is not in this round's roster.")
        if me not in survivors:
            raise SecAggError(
                f"Refused to unmask: the coordinator lists {me} as dropped, but it sent its input."
            )
        if len(survivors) < self.params.threshold:
            raise SecAggAborted(
                f"Secure aggregation aborted: only {len(survivors)} hospitals sent inputs, "
                f"{self.params.threshold} needed; nothing was revealed."
            )
        holding = set(self._held) | {me}
        if survivors | dropped != holding:
            odd = sorted((survivors | dropped) ^ holding)[0]
            raise SecAggError(
                f"Refused to unmask: the coordinator's lists disagree with this hospital's view of {odd}."
            )

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Step 5: for each peer, the self-mask share if it survived or the key share if it dropped.

        Only for the survivor set this hospital signed, and only once at least m survivors of that
        set (this hospital among them) have signed exactly that set. Never both shares for one peer,
        and one answer per round.
        """
        self._expect(SIGNED, request, UnmaskRequest, "unmask")
        me = self.hospital_id
        if (request.survivors, request.dropped) != self._signed:
            raise SecAggError(
                "Refused to unmask: the coordinator now shows another survivor set than the one this "
                "hospital signed (it may be showing hospitals different sets)."
            )
        fields = survivor_fields(self.params.round_id, *self._signed)
        valid = {
            signer
            for signer, signature in request.signatures.items()
            if signer in request.survivors and verify(self._peer_keys[signer], signature, *fields)
        }
        if me not in valid:
            raise SecAggError("Refused to unmask: this hospital's own signature on the survivor set is missing.")
        if len(valid) < self.params.threshold:
            raise SecAggError(
                f"Refused to unmask: only {len(valid)} survivors signed this survivor set, "
                f"{self.params.threshold} needed; nothing was revealed."
            )
        survivors, dropped = set(request.survivors), set(request.dropped)
        assert self._own_shares is not None  # set by share_keys, cleared only by this answer
        shares = {**self._held, me: self._own_shares}
        unsigned = UnmaskResponse(
            self.params.round_id,
            me,
            seed_shares={peer: shares[peer][1] for peer in sorted(survivors)},
            key_shares={peer: shares[peer][0] for peer in sorted(dropped)},
            signature=b"",
        )
        self.phase = DONE
        self._held, self._own_shares = {}, None
        return dataclasses.replace(unsigned, signature=sign(self._identity, *unsigned.signed_fields()))
