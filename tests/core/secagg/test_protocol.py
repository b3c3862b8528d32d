"""Whole rounds: exact ring sums with dropouts at every phase, aborts below the threshold."""

import numpy as np
import pytest

from core.errors import SecAggAborted
from core.secagg import RoundParams, fixed_point_for_bound, run_round, simulate
from core.secagg.simulate import hospital_ids


def _params(k, threshold, length, *, bits=32, round_id="test:round:1", colluders=0):
    return RoundParams(round_id, threshold, length, fixed_point_for_bound(1.0, k, bits), colluders=colluders)


def _ring_inputs(k, length, bits, seed):
    dtype = np.uint32 if bits == 32 else np.uint64
    rng = np.random.default_rng(seed)
    return [rng.integers(0, np.iinfo(dtype).max, length, dtype=dtype, endpoint=True) for _ in range(k)]


def _ring_sum(vectors, included, dtype):
    total = np.zeros_like(vectors[0])
    for index in included:
        np.add(total, vectors[index], out=total)
    return total.astype(dtype)


def _random_drops(k, threshold, seed):
    """Disjoint random dropouts at all four phases that leave exactly `threshold` answering."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(k)
    spare = k - threshold
    cuts = np.sort(rng.integers(0, spare + 1, 3))
    phases = np.split(order[:spare], cuts)
    return dict(
        drop_before_advertising=set(phases[0].tolist()),
        drop_before_sharing=set(phases[1].tolist()),
        drop_before_masking=set(phases[2].tolist()),
        drop_after_masking=set(phases[3].tolist()),
    )


@pytest.mark.parametrize(
    ("k", "threshold", "length", "bits", "seed"),
    [
        (2, 2, 64, 32, 0),
        (3, 2, 64, 32, 1),
        (3, 2, 64, 64, 2),
        (10, 6, 257, 32, 3),
        (10, 6, 33, 64, 4),
        (50, 26, 8, 32, 5),
    ],
)
def test_exact_ring_sum_with_random_drops_down_to_threshold(k, threshold, length, bits, seed):
    inputs = _ring_inputs(k, length, bits, seed)
    drops = _random_drops(k, threshold, seed)
    result = run_round(_params(k, threshold, length, bits=bits), inputs, encoded=True, **drops)
    # Dropping after masking still counts; dropping before it does not.
    excluded = drops["drop_before_advertising"] | drops["drop_before_sharing"] | drops["drop_before_masking"]
    included = [i for i in range(k) if i not in excluded]
    assert result.included == tuple(hospital_ids(k)[i] for i in included)
    assert np.array_equal(result.ring_sum, _ring_sum(inputs, included, inputs[0].dtype))


@pytest.mark.parametrize("k", [3, 10])
def test_exact_sum_without_drops_and_per_hospital_masking(k):
    """pairwise_once=False runs each hospital's own mask_encoded, as on separate machines."""
    inputs = _ring_inputs(k, 100, 32, 7)
    for pairwise_once in (True, False):
        result = run_round(
            _params(k, k // 2 + 1, 100),
            inputs,
            encoded=True,
            pairwise_once=pairwise_once,
            drop_before_masking={1},
        )
        assert np.array_equal(result.ring_sum, _ring_sum(inputs, [i for i in range(k) if i != 1], np.uint32))


def test_the_threshold_rule_is_enforced_by_both_sides():
    """2m > K + t: K = 4, m = 2 (any t) and K = 4, m = 3, t = 2 are refused before any key is made."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.errors import SecAggError
    from core.secagg import SecAggClient, SecAggServer
    from core.secagg.crypto import ed25519_public_bytes

    keys = {h: Ed25519PrivateKey.generate() for h in hospital_ids(4)}
    peers = {h: ed25519_public_bytes(k) for h, k in keys.items()}
    for threshold, colluders in ((2, 0), (3, 2)):
        params = _params(4, threshold, 8, colluders=colluders)
        with pytest.raises(SecAggError, match="2m > K"):
            SecAggServer(params, peers)
        with pytest.raises(SecAggError, match="2m > K"):
            SecAggClient(params, "h000", keys["h000"], peers)
    SecAggClient(_params(4, 3, 8, colluders=1), "h000", keys["h000"], peers)  # 6 > 5: accepted


@pytest.mark.parametrize(
    "drops",
    [
        {"drop_before_advertising": {0, 1, 2}},
        {"drop_before_sharing": {0, 1, 2}},
        {"drop_before_masking": {0, 1, 2}},
        {"drop_after_masking": {0, 1, 2}},
        {"drop_before_sharing": {0}, "drop_before_masking": {1}, "drop_after_masking": {2}},
    ],
)
def test_below_threshold_aborts(drops):
    with pytest.raises(SecAggAborted, match="nothing was revealed"):
        run_round(_params(6, 4, 16), _ring_inputs(6, 16, 32, 0), encoded=True, **drops)


def test_simulate_returns_the_float_sum_over_included_hospitals():
    rng = np.random.default_rng(5)
    inputs = [rng.normal(size=300) for _ in range(5)]
    total = simulate(inputs, 3, drop_before_masking=[1], drop_after_masking=[3])
    expected = sum(inputs) - inputs[1]
    assert np.abs(total - expected).max() < 1e-6
    wide = simulate(inputs, 3, drop_before_masking=[1], bits=64)
    assert np.abs(wide - expected).max() < 1e-10
    with pytest.raises(SecAggAborted):
        simulate(inputs, 4, drop_before_masking=[0, 1])


def test_mask_input_clips_to_the_bound_and_counts(manual_round):
    r = manual_round(k=3, threshold=2, length=4).advertise().share()
    values = {"h000": [2.0, -3.0, 0.5, 0.0], "h001": [0.25, 0.0, 0.0, 1.0], "h002": [0.0, 0.0, -0.5, 9.0]}
    for h, v in values.items():
        r.server.receive_masked_input(r.clients[h].mask_input(r.bundles[h], np.array(v)))
    assert [r.clients[h].clipped for h in values] == [2, 0, 1]
    r.survivor_set = r.server.close_masking()
    r.consistency()
    for h in values:
        r.server.receive_unmask(r.clients[h].unmask(r.request))
    total = r.server.finish().values
    assert np.allclose(total, [1.25, -1.0, 0.0, 2.0], atol=1e-6)


def test_mask_together_gives_each_hospital_exactly_its_own_masked_vector(manual_round):
    from core.secagg.prg import MaskExpander
    from core.secagg.simulate import mask_together

    r = manual_round(k=5, threshold=3, length=64).advertise().share()
    expected = {}
    for h in r.ids:
        plan = r.clients[h]._plan_masks(r.bundles[h], r.inputs[h])
        alone = plan.ring.copy()
        MaskExpander(64, np.uint32).apply(alone, plan.add, plan.subtract)
        expected[h] = alone
    together = mask_together(
        [r.clients[h] for h in r.ids], [r.bundles[h] for h in r.ids], list(r.inputs.values())
    )
    for h, message in zip(r.ids, together, strict=True):
        assert np.array_equal(message.vector, expected[h])
        r.server.receive_masked_input(message)  # and each is validly signed
