"""Mask expansion split over cores and chunks is bit for bit the plain, one-stream expansion."""

import hashlib
import multiprocessing
import os

import numpy as np
import pytest

from core.errors import SecAggError
from core.secagg import cores, prg
from core.secagg.messages import VECTOR_DIGEST_PIECE, vector_digest
from core.secagg.prg import MaskExpander, keystream


def whole_mask(seed: bytes, length: int, dtype) -> np.ndarray:
    """The reference: one AES-256-CTR stream from counter 0 over the whole vector."""
    nbytes = length * np.dtype(dtype).itemsize
    return np.frombuffer(keystream(seed).update(bytes(nbytes)), dtype=dtype).copy()


def test_a_keystream_started_at_an_offset_is_the_tail_of_the_whole_stream():
    seed = os.urandom(32)
    whole = keystream(seed).update(bytes(4096))
    for offset in (16, 32, 1024, 4080):
        assert keystream(seed, offset).update(bytes(4096 - offset)) == whole[offset:]


def test_a_keystream_refuses_an_offset_inside_an_aes_block():
    with pytest.raises(SecAggError):
        keystream(os.urandom(32), 8)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("workers", [1, 2, 3, 7])
@pytest.mark.parametrize("chunk_bytes", [64, 4096, prg.CHUNK_BYTES])
def test_split_and_chunked_masking_equals_the_sequential_masks(monkeypatch, dtype, workers, chunk_bytes):
    monkeypatch.setattr(prg, "CHUNK_BYTES", chunk_bytes)
    length = 10_007  # not a multiple of any chunk
    rng = np.random.default_rng(workers)
    info = np.iinfo(dtype)
    start = rng.integers(0, info.max, length, dtype=dtype, endpoint=True)
    add, subtract = [os.urandom(32) for _ in range(3)], [os.urandom(32) for _ in range(2)]
    expected = start.copy()
    for seed in add:
        expected += whole_mask(seed, length, dtype)
    for seed in subtract:
        expected -= whole_mask(seed, length, dtype)
    target = start.copy()
    MaskExpander(length, dtype, workers=workers).apply(target, add, subtract)
    assert np.array_equal(target, expected)


def test_one_seed_applied_to_several_targets_matches_each_applied_alone(monkeypatch):
    monkeypatch.setattr(prg, "CHUNK_BYTES", 1024)
    length = 5_000
    seeds = [os.urandom(32) for _ in range(3)]
    a, b = np.arange(length, dtype=np.uint32), np.full(length, 7, np.uint32)
    alone_a, alone_b = a.copy(), b.copy()
    expander = MaskExpander(length, np.uint32, workers=2)
    expander.apply(alone_a, add=seeds[:2])
    expander.apply(alone_b, add=seeds[2:], subtract=seeds[:1])
    expander.apply_many([(seeds[0], [(a, True), (b, False)]), (seeds[1], [(a, True)]), (seeds[2], [(b, True)])])
    assert np.array_equal(a, alone_a) and np.array_equal(b, alone_b)


def test_masking_from_a_start_vector_equals_copying_it_first(monkeypatch):
    monkeypatch.setattr(prg, "CHUNK_BYTES", 1024)
    length = 5_000
    source = np.random.default_rng(1).integers(0, 2**32, length, dtype=np.uint32)
    add, subtract = [os.urandom(32)], [os.urandom(32)]
    copied = source.copy()
    MaskExpander(length, np.uint32, workers=1).apply(copied, add, subtract)
    fresh = np.empty_like(source)
    MaskExpander(length, np.uint32, workers=3).apply(fresh, add, subtract, start=source)
    assert np.array_equal(fresh, copied)
    assert not np.array_equal(source, copied)  # the source is left alone


def test_masking_refuses_a_target_of_the_wrong_size_type_or_layout():
    expander = MaskExpander(100, np.uint32)
    seed = os.urandom(32)
    for bad in (
        np.zeros(99, np.uint32),
        np.zeros(100, np.uint64),
        np.zeros(200, np.uint32)[::2],
        np.frombuffer(bytes(400), np.uint32),  # read-only
    ):
        with pytest.raises(SecAggError):
            expander.apply(bad, add=[seed])


def reference_digest(vector: np.ndarray) -> bytes:
    data = vector.tobytes()
    pieces = [data[i : i + VECTOR_DIGEST_PIECE] for i in range(0, len(data), VECTOR_DIGEST_PIECE)] or [b""]
    top = b"dopamine-vector/v1" + len(data).to_bytes(8, "big")
    return hashlib.sha256(top + b"".join(hashlib.sha256(piece).digest() for piece in pieces)).digest()


@pytest.mark.parametrize("length", [1, VECTOR_DIGEST_PIECE // 4, VECTOR_DIGEST_PIECE // 4 + 1, 725_061])
def test_the_vector_digest_is_the_documented_hash_tree(length):
    vector = np.random.default_rng(length).integers(0, 2**32, length, dtype=np.uint32)
    digest = vector_digest(vector)
    assert digest == reference_digest(vector)
    vector[-1] ^= 1
    assert vector_digest(vector) != digest


def test_the_vector_digest_binds_the_length():
    # Same pieces' bytes but one more zero word: another digest.
    short = np.zeros(VECTOR_DIGEST_PIECE // 4, np.uint32)
    assert vector_digest(short) != vector_digest(np.zeros(short.shape[0] + 1, np.uint32))


def test_split_covers_every_index_once_and_raises_a_workers_error():
    seen = np.zeros(1000, np.int64)

    def mark(first, end):
        seen[first:end] += 1

    cores.split(mark, 1000, workers=4)
    assert (seen == 1).all()

    def fail(first, end):
        if first > 0:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        cores.split(fail, 10, workers=3)


def _mask_in_child(queue):
    target = np.zeros(50_000, np.uint32)
    MaskExpander(50_000, np.uint32, workers=2).apply(target, add=[bytes(32)])
    queue.put(int(target.sum(dtype=np.uint64)))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() exists only on POSIX")
def test_a_forked_child_masks_with_its_own_threads():
    MaskExpander(50_000, np.uint32, workers=2).apply(np.zeros(50_000, np.uint32), add=[bytes(32)])  # pool started
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_mask_in_child, args=(queue,))
    child.start()
    child.join(60)  # a pool inherited from the parent would have no threads and never finish
    if child.is_alive():
        child.kill()
    assert child.exitcode == 0
    assert queue.get(timeout=5) == int(whole_mask(bytes(32), 50_000, np.uint32).sum(dtype=np.uint64))
