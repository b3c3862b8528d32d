"""A round driven step by step, so tests can tamper with any message in between."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.secagg import RoundParams, SecAggClient, SecAggServer, fixed_point_for_bound
from core.secagg.crypto import ed25519_public_bytes
from core.secagg.simulate import hospital_ids


class ManualRound:
    def __init__(self, k=4, threshold=3, length=32, round_id="test:round:1", keys=None, colluders=0):
        self.ids = hospital_ids(k)
        self.keys = keys or [Ed25519PrivateKey.generate() for _ in self.ids]
        self.peers = {h: ed25519_public_bytes(key) for h, key in zip(self.ids, self.keys, strict=True)}
        self.params = RoundParams(round_id, threshold, length, fixed_point_for_bound(1.0, k), colluders=colluders)
        self.server = SecAggServer(self.params, self.peers)
        self.clients = {
            h: SecAggClient(self.params, h, key, self.peers)
            for h, key in zip(self.ids, self.keys, strict=True)
        }
        rng = np.random.default_rng(0)
        self.inputs = {h: rng.integers(0, 2**32, length, dtype=np.uint32) for h in self.ids}
        self.adverts = self.shares = self.bundles = self.masked = self.roster = None
        self.survivor_set = self.request = None

    def advertise(self, ids=None):
        self.adverts = {h: self.clients[h].advertise() for h in ids or self.ids}
        for message in self.adverts.values():
            self.server.receive_advertise(message)
        self.roster = self.server.close_advertise()
        return self

    def share(self, ids=None):
        self.shares = {h: self.clients[h].share_keys(self.roster) for h in ids or self.roster_ids()}
        for message in self.shares.values():
            self.server.receive_shares(message)
        self.bundles = self.server.close_sharing()
        return self

    def mask(self, ids=None):
        self.masked = {
            h: self.clients[h].mask_encoded(self.bundles[h], self.inputs[h]) for h in ids or self.bundles
        }
        for message in self.masked.values():
            self.server.receive_masked_input(message)
        self.survivor_set = self.server.close_masking()
        return self

    def consistency(self, ids=None):
        for h in ids or self.survivor_set.survivors:
            self.server.receive_survivor_signature(self.clients[h].sign_survivors(self.survivor_set))
        self.request = self.server.close_consistency()
        return self

    def roster_ids(self):
        return [a.sender for a in self.roster.adverts]


@pytest.fixture
def manual_round():
    return ManualRound
