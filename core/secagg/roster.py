"""What both sides derive from the accepted advertisements: ids, share positions, seeds."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from core.errors import SecAggError
from core.secagg.crypto import PUBLIC_KEY_BYTES, agree, canonical, verify
from core.secagg.messages import AdvertiseKeys
from core.secagg.params import RoundParams, check_hospital_id


def check_peer_keys(peer_keys: Mapping[str, bytes]) -> dict[str, bytes]:
    """A copy of the enrolled hospitals' Ed25519 public keys, validated."""
    if not isinstance(peer_keys, Mapping):
        raise SecAggError("Peer keys must map hospital ids to Ed25519 public keys.")
    result = {}
    for hospital, key in peer_keys.items():
        check_hospital_id(hospital)
        if not isinstance(key, bytes) or len(key) != PUBLIC_KEY_BYTES:
            raise SecAggError(
                f"The enrolled key of {hospital} is not a 32-byte Ed25519 public key; re-enroll it."
            )
        result[hospital] = key
    return result


def check_advert(advert: AdvertiseKeys, params: RoundParams, peer_keys: Mapping[str, bytes]) -> None:
    """Refuse an advertisement from another round, an unknown hospital or with a bad signature."""
    if advert.round_id != params.round_id:
        raise SecAggError(
            f"Refused keys of {advert.sender}: they are for round {advert.round_id}, not {params.round_id}."
        )
    if advert.sender not in peer_keys:
        raise SecAggError(f"Refused keys of {advert.sender}: not an enrolled hospital of this federation.")
    if advert.params_digest != params.digest():
        raise SecAggError(f"Refused keys of {advert.sender}: they were made for different round parameters.")
    if advert.enc_public == advert.mask_public:
        raise SecAggError(f"Refused keys of {advert.sender}: its two round keys must differ.")
    if not verify(peer_keys[advert.sender], advert.signature, *advert.signed_fields()):
        raise SecAggError(
            f"Refused keys of {advert.sender}: the signature does not match its enrolled identity."
        )


def pairwise_seed(
    mask_key: X25519PrivateKey, peer_mask_public: bytes, round_id: str, a: str, b: str
) -> bytes:
    """The seed of the mask shared by hospitals a and b (same value computed by both)."""
    low, high = sorted((a, b))
    return agree(mask_key, peer_mask_public, "pairwise-mask", round_id, low, high)


def share_key(enc_key: X25519PrivateKey, peer_enc_public: bytes, round_id: str, a: str, b: str) -> bytes:
    low, high = sorted((a, b))
    return agree(enc_key, peer_enc_public, "share-key", round_id, low, high)


def share_associated_data(round_id: str, sender: str, recipient: str) -> bytes:
    return canonical("share", round_id, sender, recipient)


def self_mask_digest(round_id: str, hospital: str, seed: bytes) -> bytes:
    return hashlib.sha256(canonical("self-mask", round_id, hospital, seed)).digest()


class Roster:
    """The round's accepted hospitals and everything derived from them (the complete graph).

    Share positions are 1 + the index in the sorted ids, so every party agrees on them.
    """

    def __init__(self, params: RoundParams, adverts: Iterable[AdvertiseKeys]) -> None:
        self.params = params
        self.adverts = {advert.sender: advert for advert in sorted(adverts, key=lambda a: a.sender)}
        self.ids = tuple(self.adverts)
        self.position = {hospital: index + 1 for index, hospital in enumerate(self.ids)}
        everyone = frozenset(self.ids)
        self.peers = {hospital: everyone - {hospital} for hospital in self.ids}
        keys = [a.enc_public for a in self.adverts.values()] + [a.mask_public for a in self.adverts.values()]
        if len(set(keys)) != len(keys):
            raise SecAggError(
                "Refused the key roster: two round keys are the same (a copied or replayed key)."
            )

    @property
    def holders(self) -> frozenset[str]:
        """Who holds shares of every hospital's secrets: all of them."""
        return frozenset(self.ids)
