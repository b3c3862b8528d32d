"""What the coordinator sees of one hospital looks random, and it never stores an unmasked vector."""

import numpy as np
from scipy.stats import chisquare, pearsonr

from core.secagg import SecAggServer


def _masked_vector(manual_round, inputs):
    r = manual_round(k=3, threshold=2, length=inputs.shape[0])
    r.inputs = {h: inputs for h in r.ids}
    r.advertise().share()
    return r.clients["h000"].mask_encoded(r.bundles["h000"], inputs).vector


def test_masked_vector_bytes_are_uniform_even_for_a_constant_input(manual_round):
    masked = _masked_vector(manual_round, np.full(50_000, 7, np.uint32))
    counts = np.bincount(masked.view(np.uint8), minlength=256)
    assert chisquare(counts).pvalue > 1e-6
    # Control: the same test on the unmasked input fails hard.
    raw = np.bincount(np.full(50_000, 7, np.uint32).view(np.uint8), minlength=256)
    assert chisquare(raw).pvalue < 1e-100


def test_masked_vector_is_uncorrelated_with_the_input(manual_round):
    inputs = (np.arange(50_000, dtype=np.uint64) * 85_000).astype(np.uint32)  # a ramp across the ring
    masked = _masked_vector(manual_round, inputs)
    correlation, _ = pearsonr(inputs.astype(np.float64), masked.astype(np.float64))
    assert abs(correlation) < 0.03  # ~6.7 standard errors at n = 50,000
    high_bits = pearsonr((inputs >> 31).astype(float), (masked >> 31).astype(float))[0]
    assert abs(high_bits) < 0.03


def _stored_arrays(obj, seen=None):
    """Every numpy array and bytes-like value reachable from obj's state."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, bytes | bytearray):
        yield np.frombuffer(obj, np.uint8)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _stored_arrays(key, seen)
            yield from _stored_arrays(value, seen)
    elif isinstance(obj, list | tuple | set | frozenset):
        for value in obj:
            yield from _stored_arrays(value, seen)
    elif hasattr(obj, "__dict__"):
        yield from _stored_arrays(vars(obj), seen)


def _holds_vector(server: SecAggServer, vector: np.ndarray) -> bool:
    raw = vector.view(np.uint8)
    for array in _stored_arrays(server):
        flat = array.reshape(-1).view(np.uint8) if array.dtype != np.uint8 else array.reshape(-1)
        if flat.size >= raw.size and np.array_equal(flat[: raw.size], raw):
            return True
    return False


def test_coordinator_state_never_holds_an_unmasked_vector(manual_round):
    r = manual_round(k=5, threshold=3, length=256)
    secrets = list(r.inputs.values())

    def check():
        arrays = [a for a in _stored_arrays(r.server) if a.size >= 256 and a.dtype != np.uint8]
        assert len(arrays) <= 1  # the running sum only: memory does not grow with the hospitals
        assert not any(_holds_vector(r.server, v) for v in secrets)

    r.advertise()
    check()
    r.share()
    check()
    for h in ("h000", "h001", "h002", "h003"):  # h004 drops before masking
        r.server.receive_masked_input(r.clients[h].mask_encoded(r.bundles[h], r.inputs[h]))
        check()
    r.survivor_set = r.server.close_masking()
    check()
    r.consistency(ids=["h000", "h001", "h002"])  # h003 drops after masking: still included
    check()
    for h in ("h000", "h001", "h002"):
        r.server.receive_unmask(r.clients[h].unmask(r.request))
        check()
    result = r.server.finish()
    check()
    expected = (
        r.inputs["h000"].astype(np.uint64) + r.inputs["h001"] + r.inputs["h002"] + r.inputs["h003"]
    ).astype(np.uint32)
    assert np.array_equal(result.ring_sum, expected)
    assert result.dropped == ("h004",)


def test_check_above_can_fail():
    """Control: the state walker does find a vector that is stored."""
    server = SecAggServer.__new__(SecAggServer)
    vector = np.arange(300, dtype=np.uint32)
    server.__dict__["kept"] = {"x": [vector.copy()]}
    assert _holds_vector(server, vector)
