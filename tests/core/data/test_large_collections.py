"""Large collections (issue 14): the first decode in a process pool, a per-collection stack file in the image
cache, and training that reads it a batch at a time (core.data.store) with the same results as a tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import core.data.cache as cache_module
from core.data.cache import STACK_SUFFIX, STACKS, load_images, load_tensors
from core.data.dataset import Sample
from core.data.preprocess import Preprocessing
from core.data.store import ImageStore
from core.errors import Cancelled, DataError
from core.jobs import CancelToken

SPEC = Preprocessing(size=16)


@pytest.fixture
def samples(tmp_path, write_image):
    return [Sample(write_image(tmp_path / "imgs" / f"{i:02d}.png", size=(30 + i % 7, 24), seed=i), i % 3)
            for i in range(12)]


def stacks(folder):
    return sorted((folder / STACKS).glob(f"*{STACK_SUFFIX}"))


def test_the_pool_decodes_byte_for_byte_what_one_process_decodes(samples):
    one, labels = load_tensors(samples, SPEC, workers=1)
    pooled, pooled_labels = load_tensors(samples, SPEC, workers=2)
    assert pooled.dtype == torch.uint8 and pooled.shape == (12, 3, 16, 16)
    assert torch.equal(one, pooled) and torch.equal(labels, pooled_labels)


def test_a_stack_is_written_once_and_a_warm_start_decodes_nothing(samples, tmp_path):
    cache = tmp_path / "cache"
    first, labels = load_images(samples, SPEC, cache_dir=cache, workers=2, on_disk=True)
    assert first.on_disk and first.decoded == len(samples) and len(stacks(cache)) == 1
    # a plain .npy: numpy maps it without pickle
    mapped = np.load(stacks(cache)[0], mmap_mode="r", allow_pickle=False)
    assert mapped.shape == (12, 3, 16, 16) and mapped.dtype == np.uint8
    second, again = load_images(samples, SPEC, cache_dir=cache, on_disk=True)
    assert second.decoded == 0 and torch.equal(labels, again)
    expected, _ = load_tensors(samples, SPEC, workers=1)
    assert torch.equal(second.to_tensor(), expected)
    # indexing as a tensor does: int, slice, index tensor (any order, repeats), mask
    index = torch.tensor([5, 0, 11, 5, 3])
    assert torch.equal(second[index], expected[index]) and torch.equal(second[2:9], expected[2:9])
    assert torch.equal(second[-1], expected[-1]) and torch.equal(second[np.array([7])], expected[[7]])
    mask = torch.arange(12) % 4 == 1
    assert torch.equal(second[mask], expected[mask])
    assert torch.equal(second.subset(index)[1:4], expected[index][1:4])
    with pytest.raises(IndexError):
        second[torch.tensor([12])]


def test_a_corrupt_or_truncated_stack_is_rebuilt_from_the_entries(samples, tmp_path):
    cache = tmp_path / "cache"
    good = load_images(samples, SPEC, cache_dir=cache, on_disk=True)[0].to_tensor()
    stack = stacks(cache)[0]
    for damage in (lambda data: data[: len(data) // 2], lambda data: b"\x80\x04\x95 not an npy file" + data[30:]):
        stack.write_bytes(damage(stack.read_bytes()))
        rebuilt, _ = load_images(samples, SPEC, cache_dir=cache, on_disk=True)
        assert rebuilt.decoded == 0  # from the per-image entries
        assert torch.equal(rebuilt.to_tensor(), good) and stacks(cache) == [stack]
        assert np.load(stack, mmap_mode="r", allow_pickle=False).shape == (12, 3, 16, 16)


def test_a_changed_file_makes_a_new_stack_and_decodes_only_that_file(samples, tmp_path, write_image):
    cache = tmp_path / "cache"
    load_images(samples, SPEC, cache_dir=cache, on_disk=True)
    write_image(samples[4].path, size=(33, 24), seed=99)
    changed, _ = load_images(samples, SPEC, cache_dir=cache, on_disk=True)
    assert changed.decoded == 1 and len(stacks(cache)) == 2
    assert torch.equal(changed.to_tensor(), load_tensors(samples, SPEC, workers=1)[0])


def test_only_the_most_recent_stacks_are_kept(samples, tmp_path):
    cache = tmp_path / "cache"
    for count in range(2, 2 + cache_module.MAX_STACKS + 2):
        load_images(samples[:count], SPEC, cache_dir=cache, on_disk=True)
    assert len(stacks(cache)) == cache_module.MAX_STACKS


def test_small_collections_stay_in_memory_and_large_ones_go_to_disk(samples, tmp_path, monkeypatch):
    small, _ = load_images(samples, SPEC, cache_dir=tmp_path / "cache")
    assert not small.on_disk and not (tmp_path / "cache" / STACKS).exists()
    monkeypatch.setattr(cache_module, "STACK_MIN_BYTES", 12 * 3 * 16 * 16)
    large, _ = load_images(samples, SPEC, cache_dir=tmp_path / "cache")
    assert large.on_disk and torch.equal(large.to_tensor(), small.to_tensor())


def test_without_a_cache_folder_the_pool_writes_nothing(samples, tmp_path):
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    images, _ = load_images(samples, SPEC, workers=2, on_disk=True)  # on_disk needs a cache folder
    assert not images.on_disk and images.decoded == len(samples)
    assert {p for p in tmp_path.rglob("*") if p.is_file()} == before


def test_a_bad_image_in_a_pool_chunk_names_the_file_and_leaves_no_stack(samples, tmp_path):
    bad = samples[7].path.with_name("broken.png")
    bad.write_bytes(samples[7].path.read_bytes()[:60])  # truncated
    mixed = samples[:7] + [Sample(bad, 1)] + samples[8:]
    with pytest.raises(DataError, match="broken.png.*inspect"):
        load_images(mixed, SPEC, cache_dir=tmp_path / "cache", workers=2, on_disk=True)
    assert not stacks(tmp_path / "cache") and not list((tmp_path / "cache" / STACKS).glob(".*.tmp"))


def test_cancel_stops_a_pool_decode(samples, tmp_path, monkeypatch):
    cancel = CancelToken()
    seen = []

    def progress(fraction, message):
        seen.append(message)
        if message.startswith("Decoded"):
            cancel.cancel()

    monkeypatch.setattr(cache_module, "CHUNK_FILES", 1)  # one file a chunk: at most 4 of 12 in flight
    with pytest.raises(Cancelled):
        load_images(samples, SPEC, cache_dir=tmp_path / "cache", workers=2, on_disk=True, progress=progress,
                    cancel=cancel)
    assert any(m.startswith("Decoded") for m in seen) and f"Decoded {len(samples)} of {len(samples)} images" not in seen
    assert not stacks(tmp_path / "cache") and not list((tmp_path / "cache" / STACKS).glob(".*.tmp"))


def test_the_store_trains_exactly_as_the_tensor(samples, tmp_path):
    """DP-SGD, the FSCDP step and evaluation give the same numbers from the stack as from the tensor."""
    from core.federation.local_work import fscdp_step
    from core.federation.plan import FederationPlan
    from core.federation.weights import ParameterLayout
    from core.models import build_model
    from core.privacy.noise import DPRandom
    from core.training.loop import DPSettings, evaluate_model, train_local

    store, labels = load_images(samples, SPEC, cache_dir=tmp_path / "cache", on_disk=True)
    tensor = store.to_tensor()
    assert store.on_disk and isinstance(store, ImageStore)

    def dp_trained(images):
        torch.manual_seed(0)
        model = build_model("small_cnn", num_classes=3)
        train_local(model, images, labels, SPEC, epochs=2, batch_size=4, lr=0.5, momentum=0.0,
                    dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0), rng=DPRandom(b"k" * 32))
        return model, torch.cat([p.detach().flatten() for p in model.parameters()])

    model, from_tensor = dp_trained(tensor)
    _, from_store = dp_trained(store)
    assert torch.equal(from_tensor, from_store)
    assert evaluate_model(model, store, labels, SPEC, num_classes=3) == \
        evaluate_model(model, tensor, labels, SPEC, num_classes=3)

    plan = FederationPlan(name="t", federation_id="f", mode="fscdp", rounds=1, hospitals=4, threshold=3,
                          noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.5)

    def step(images):
        torch.manual_seed(0)
        fresh = build_model("small_cnn", num_classes=3)
        return fscdp_step(fresh, ParameterLayout(fresh), images, labels, SPEC, plan, rng=DPRandom(b"s" * 32))

    a, b = step(tensor), step(store)
    assert a.batch_size == b.batch_size > 0 and np.array_equal(a.vector, b.vector)


@pytest.fixture
def messy_many(messy, write_image, write_dicom):
    """The data tests' collection with every problem (conftest's ``messy``), plus a multi-frame file and more
    good images, so that the pool's chunks hold several kinds."""
    write_dicom(messy / "2" / "frames.dcm", np.stack([np.full((64, 64), v, np.uint8) for v in (60, 120, 180)]),
                frames=3)
    for i in range(6):
        write_image(messy / "1" / f"more{i}.png", size=(70 + i, 64), seed=10 + i)
    return messy


@pytest.mark.parametrize("fundus", [False, True])
def test_validation_in_the_pool_reports_what_one_process_reports(messy_many, fundus):
    from core.data.validation import validate

    spec = Preprocessing(size=64, fundus_crop=True) if fundus else None
    one = validate(messy_many, min_size=64, preprocessing=spec, workers=1)
    pooled = validate(messy_many, min_size=64, preprocessing=spec, workers=2)
    assert pooled.to_dict() == one.to_dict()
    assert pooled.usable_samples == one.usable_samples and pooled.image_sizes == one.image_sizes
    kinds = {p.kind for p in one.problems}
    assert {"duplicate", "truncated", "not_image", "too_small"} <= kinds
    assert sum(s.path.name == "frames.dcm" for s in one.usable_samples) == 3


def test_cancel_stops_validation_in_the_pool(messy_many):
    from core.data.validation import validate

    cancel = CancelToken()

    def progress(fraction, message):
        if fraction > 0:
            cancel.cancel()

    with pytest.raises(Cancelled):
        validate(messy_many, min_size=64, workers=2, progress=progress, cancel=cancel)


def test_local_training_from_stacks_matches_training_in_memory(tmp_path, monkeypatch):
    """`dopamine train` (mode C, seeded) on a collection read from stack files gives the model and metrics
    it gives from tensors in memory."""
    from core.data.synthetic import write_demo_data
    from core.models.package import read_package
    from core.training.config import TrainConfig
    from core.training.trainer import run

    write_demo_data(tmp_path / "demo", hospitals=1, per_hospital=40, test_images=10, size=48, seed=5)

    def train(name):
        config = TrainConfig(data=tmp_path / "demo" / "hospital_01", out=tmp_path / f"{name}.dpm", mode="c",
                             model="small_cnn", epochs=2, batch_size=8, lr=0.05, image_size=32,
                             home=tmp_path / name, seed=1)
        result = run(config)
        return result, read_package(tmp_path / f"{name}.dpm").state_dict

    memory, memory_weights = train("memory")
    assert not (tmp_path / "memory" / "cache" / "images" / STACKS).exists()
    monkeypatch.setattr(cache_module, "STACK_MIN_BYTES", 0)
    disk, disk_weights = train("disk")
    assert len(stacks(tmp_path / "disk" / "cache" / "images")) == 2  # training and validation
    assert disk.metrics == memory.metrics and [e.train_loss for e in disk.history] == \
        [e.train_loss for e in memory.history]
    assert all(torch.equal(disk_weights[name], memory_weights[name]) for name in memory_weights)
