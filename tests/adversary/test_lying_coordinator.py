"""A lying coordinator (with up to t colluding hospitals) against the real secure-aggregation state machines.

Each attack is played twice: against the hospitals as they are (it must fail), and, as a control,
against hospitals that answer whatever they are asked (what the code did before the consistency
check): there the same attacker really recovers a hospital's input or a sum over fewer than m, so
the refusal is what protects them.
"""

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import SecAggError
from core.secagg import (
    RoundParams,
    SecAggClient,
    SurvivorSet,
    UnmaskRequest,
    fixed_point_for_bound,
    shamir,
)
from core.secagg.crypto import ed25519_public_bytes, sign, x25519_from_private_bytes
from core.secagg.messages import survivor_fields
from core.secagg.prg import MaskExpander
from core.secagg.roster import pairwise_seed

LENGTH = 64


class Attack:
    """Every hospital advertises, shares and masks honestly; the coordinator then lies about survivors."""

    def __init__(self, k: int, threshold: int, colluders: int = 0) -> None:
        self.ids = [f"h{i}" for i in range(1, k + 1)]
        self.keys = {h: Ed25519PrivateKey.generate() for h in self.ids}
        self.peers = {h: ed25519_public_bytes(key) for h, key in self.keys.items()}
        self.params = RoundParams("attack:r1:a1", threshold, LENGTH, fixed_point_for_bound(1.0, k), colluders)
        self.clients = {h: SecAggClient(self.params, h, self.keys[h], self.peers) for h in self.ids}
        rng = np.random.default_rng(7)
        self.inputs = {h: rng.integers(0, 2**32, LENGTH, dtype=np.uint32) for h in self.ids}
        from core.secagg import SecAggServer

        server = SecAggServer(self.params, self.peers)  # used only to relay honest messages
        for h in self.ids:
            server.receive_advertise(self.clients[h].advertise())
        self.roster = server.close_advertise()
        for h in self.ids:
            server.receive_shares(self.clients[h].share_keys(self.roster))
        bundles = server.close_sharing()
        self.masked = {h: self.clients[h].mask_encoded(bundles[h], self.inputs[h]).vector for h in self.ids}
        self.adverts = {a.sender: a for a in self.roster.adverts}
        self.seed_shares: dict[str, dict[int, int]] = {}
        self.key_shares: dict[str, dict[int, int]] = {}

    def view(self, survivors: set[str]) -> SurvivorSet:
        return SurvivorSet(self.params.round_id, tuple(sorted(survivors)),
                           tuple(sorted(set(self.ids) - survivors)))

    def colluder_signature(self, hospital: str, survivor_set: SurvivorSet) -> bytes:
        """A colluding hospital signs whatever the coordinator wants (it holds its own key)."""
        return sign(self.keys[hospital], *survivor_fields(self.params.round_id, survivor_set.survivors,
                                                          survivor_set.dropped))

    def collect(self, hospital: str, response) -> None:
        x = self.ids.index(hospital) + 1
        for owner, value in response.seed_shares.items():
            self.seed_shares.setdefault(owner, {})[x] = value
        for owner, value in response.key_shares.items():
            self.key_shares.setdefault(owner, {})[x] = value

    def leak_as_old_code(self, hospital: str, survivor_set: SurvivorSet) -> None:
        """What a hospital without the consistency check revealed for the set it was shown."""
        client = self.clients[hospital]
        held = {**client._held, hospital: client._own_shares}
        x = self.ids.index(hospital) + 1
        for owner in survivor_set.survivors:
            self.seed_shares.setdefault(owner, {})[x] = held[owner][1]
        for owner in survivor_set.dropped:
            self.key_shares.setdefault(owner, {})[x] = held[owner][0]

    def recover_sum(self, survivors: set[str]) -> np.ndarray:
        """sum of the survivors' inputs, from their masked vectors and the collected shares."""
        m = self.params.threshold
        total = np.zeros(LENGTH, np.uint32)
        for h in survivors:
            np.add(total, self.masked[h], out=total)
        expander = MaskExpander(LENGTH, np.uint32)
        add, subtract = [], []
        for owner in survivors:
            subtract.append(shamir.reconstruct(self.seed_shares[owner], m))
        for owner in set(self.ids) - survivors:
            key, _ = x25519_from_private_bytes(shamir.reconstruct(self.key_shares[owner], m))
            for peer in survivors:
                seed = pairwise_seed(key, self.adverts[peer].mask_public, self.params.round_id, peer, owner)
                (subtract if peer < owner else add).append(seed)
        expander.apply(total, add=add, subtract=subtract)
        return total

    def true_sum(self, hospitals: set[str]) -> np.ndarray:
        total = np.zeros(LENGTH, np.uint32)
        for h in hospitals:
            np.add(total, self.inputs[h], out=total)
        return total


def test_the_rule_refuses_the_plans_where_view_splitting_unmasks_one_hospital():
    """K = 4, m = 2: {h1, h2} told h1 survived and {h3, h4} told it dropped reveal h1's input."""
    attack = Attack(4, 3)  # an allowed plan, just for its keys
    for threshold, colluders in ((2, 0), (3, 2)):
        params = RoundParams("attack:r1:a1", threshold, LENGTH, fixed_point_for_bound(1.0, 4), colluders)
        with pytest.raises(SecAggError, match="2m > K"):
            SecAggClient(params, "h1", attack.keys["h1"], attack.peers)


def test_view_splitting_cannot_release_a_sum_over_fewer_than_m():
    """K = 5, m = 3 (the issue's attack): views {1,2,3}, {1,2,4}, {1,2,3}, {1,2,4}, {1,2,5} give x1 + x2."""
    views = {"h1": {"h1", "h2", "h3"}, "h2": {"h1", "h2", "h4"}, "h3": {"h1", "h2", "h3"},
             "h4": {"h1", "h2", "h4"}, "h5": {"h1", "h2", "h5"}}

    # Control: hospitals that answer their view without a consistency check give the attacker x1 + x2.
    control = Attack(5, 3)
    for hospital, survivors in views.items():
        control.leak_as_old_code(hospital, control.view(survivors))
    assert np.array_equal(control.recover_sum({"h1", "h2"}), control.true_sum({"h1", "h2"}))

    # The real hospitals: each signs only the set it is shown and answers only for a set that m of its
    # survivors signed. The coordinator forwards every signature it has for each view.
    attack = Attack(5, 3)
    signatures: dict[tuple, dict[str, bytes]] = {}
    for hospital, survivors in views.items():
        shown = attack.view(survivors)
        signatures.setdefault(shown.survivors, {})[hospital] = attack.clients[hospital].sign_survivors(shown).signature
    answered = []
    for hospital, survivors in views.items():
        shown = attack.view(survivors)
        request = UnmaskRequest(attack.params.round_id, shown.survivors, shown.dropped, signatures[shown.survivors])
        try:
            attack.collect(hospital, attack.clients[hospital].unmask(request))
            answered.append(hospital)
        except SecAggError as exc:
            assert "survivors signed this survivor set" in str(exc)
    assert answered == []  # no view has 3 signatures from its own survivors


def _unmask_one(attack: Attack, target: str) -> np.ndarray:
    """The target's input from its masked vector, given both of its secrets."""
    m = attack.params.threshold
    seed = shamir.reconstruct(attack.seed_shares[target], m)
    key, _ = x25519_from_private_bytes(shamir.reconstruct(attack.key_shares[target], m))
    unmasked = attack.masked[target].copy()
    add, subtract = [], [seed]
    for peer in attack.ids:
        if peer != target:
            pair = pairwise_seed(key, attack.adverts[peer].mask_public, attack.params.round_id, peer, target)
            (subtract if target < peer else add).append(pair)
    MaskExpander(LENGTH, np.uint32).apply(unmasked, add=add, subtract=subtract)
    return unmasked


def test_a_coordinator_with_a_colluding_hospital_cannot_unmask_one_hospital():
    """K = 5, t = 1 (h5 colludes): h1 is shown alive to h1, h2 and dropped to h3, h4; h5 hands over both."""
    alive, gone = {"h1", "h2", "h3", "h4", "h5"}, {"h2", "h3", "h4", "h5"}

    # Control: with m = 3 (2m = K + t) and hospitals that answer what they are shown, h1's input leaks.
    control = Attack(5, 3)
    for hospital, survivors in (("h1", alive), ("h2", alive), ("h3", gone), ("h4", gone), ("h5", alive), ("h5", gone)):
        control.leak_as_old_code(hospital, control.view(survivors))
    assert np.array_equal(_unmask_one(control, "h1"), control.inputs["h1"])

    # That plan is refused outright: 2m > K + t fails.
    with pytest.raises(SecAggError, match="2m > K"):
        Attack(5, 3, colluders=1)

    # With m = 4 the round runs, and neither view collects 4 signatures of its own survivors.
    attack = Attack(5, 4, colluders=1)
    shown = {"h1": attack.view(alive), "h2": attack.view(alive), "h3": attack.view(gone), "h4": attack.view(gone)}
    signatures: dict[tuple, dict[str, bytes]] = {}
    for hospital, view in shown.items():
        signatures.setdefault(view.survivors, {})[hospital] = attack.clients[hospital].sign_survivors(view).signature
    for view in (attack.view(alive), attack.view(gone)):
        signatures[view.survivors]["h5"] = attack.colluder_signature("h5", view)
    for hospital, view in shown.items():
        request = UnmaskRequest(attack.params.round_id, view.survivors, view.dropped, signatures[view.survivors])
        with pytest.raises(SecAggError, match="only 3 survivors signed"):
            attack.clients[hospital].unmask(request)


def test_a_hospital_signs_one_survivor_set_per_round():
    attack = Attack(5, 3)
    client = attack.clients["h1"]
    client.sign_survivors(attack.view({"h1", "h2", "h3", "h4", "h5"}))
    with pytest.raises(SecAggError, match="out of order"):
        client.sign_survivors(attack.view({"h1", "h2", "h3"}))


def test_keys_of_a_hospital_outside_the_roster_are_refused():
    """The coordinator enrolls a hospital of its own (it is the CA and writes the invitations): the real
    hospitals accept round keys only from the signed roster, so the outsider never holds a share."""
    from core.secagg import KeyRoster

    attack = Attack(4, 3)
    honest = SecAggClient(RoundParams("attack:r2:a1", 3, LENGTH, fixed_point_for_bound(1.0, 4)), "h1",
                          attack.keys["h1"], attack.peers)
    fake_key = Ed25519PrivateKey.generate()
    outsider = SecAggClient(honest.params, "h9", fake_key, {**attack.peers, "h9": ed25519_public_bytes(fake_key)})
    lying = KeyRoster(honest.params.round_id, (honest.advertise(), outsider.advertise()))
    with pytest.raises(SecAggError, match="not an enrolled hospital"):
        honest.share_keys(lying)
    assert honest.phase == "advertised"  # nothing was shared
