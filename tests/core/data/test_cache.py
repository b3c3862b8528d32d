import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import core.data.cache as cache_module
from core.data import Preprocessing, Sample, load_image, load_tensors, resize_crop
from core.errors import DataError


@pytest.fixture
def decode_calls(monkeypatch):
    """Count the decodes the cache really does."""
    calls = []
    real = cache_module.open_image

    def counting(data, name, **options):
        calls.append(name)
        return real(data, name, **options)

    monkeypatch.setattr(cache_module, "open_image", counting)
    return calls


@pytest.fixture
def samples(tmp_path, write_image):
    return [Sample(write_image(tmp_path / "imgs" / f"{i}.png", size=(50, 40), seed=i), i % 3) for i in range(4)]


def test_tensors_match_the_preprocessing(tmp_path, samples):
    spec = Preprocessing(size=32)
    images, labels = load_tensors(samples, spec, cache_dir=tmp_path / "cache")
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == [0, 1, 2, 0]
    for index, sample in enumerate(samples):
        assert torch.equal(images[index], resize_crop(load_image(sample.path), spec))


def test_second_run_reads_the_cache_without_decoding(tmp_path, samples, decode_calls):
    spec = Preprocessing(size=32)
    first, _ = load_tensors(samples, spec, cache_dir=tmp_path / "cache")
    assert len(decode_calls) == 4
    entries = sorted((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 4
    assert np.load(entries[0], allow_pickle=False).shape == (3, 32, 32)  # plain arrays, no pickle
    second, _ = load_tensors(samples, spec, cache_dir=tmp_path / "cache")
    assert len(decode_calls) == 4
    assert torch.equal(first, second)


def test_changed_file_or_settings_miss(tmp_path, samples, decode_calls, write_image):
    load_tensors(samples, Preprocessing(size=32), cache_dir=tmp_path / "cache")
    decode_calls.clear()
    write_image(samples[1].path, size=(50, 40), seed=99)  # same name, new content
    load_tensors(samples, Preprocessing(size=32), cache_dir=tmp_path / "cache")
    assert decode_calls == ["1.png"]
    decode_calls.clear()
    images, _ = load_tensors(samples, Preprocessing(size=24), cache_dir=tmp_path / "cache")
    assert len(decode_calls) == 4 and images.shape == (4, 3, 24, 24)
    decode_calls.clear()
    load_tensors(samples, Preprocessing(size=32, resize=48), cache_dir=tmp_path / "cache")
    assert len(decode_calls) == 4
    decode_calls.clear()
    # mean and std are applied after the cache, so they do not invalidate it
    load_tensors(samples, Preprocessing(size=32, mean=(0.5, 0.5, 0.5)), cache_dir=tmp_path / "cache")
    assert decode_calls == []


def test_corrupt_entries_are_rebuilt(tmp_path, samples, decode_calls):
    spec = Preprocessing(size=32)
    good, _ = load_tensors(samples, spec, cache_dir=tmp_path / "cache")
    entries = sorted((tmp_path / "cache").rglob("*.npy"))
    entries[0].write_bytes(entries[0].read_bytes()[:50])  # truncated
    entries[1].write_bytes(b"\x80\x04\x95 not an npy file")  # garbage (pickle-like bytes)
    np.save(entries[2], np.zeros((3, 8, 8), np.uint8), allow_pickle=False)  # wrong shape
    decode_calls.clear()
    again, _ = load_tensors(samples, spec, cache_dir=tmp_path / "cache")
    assert len(decode_calls) == 3
    assert torch.equal(good, again)
    decode_calls.clear()
    load_tensors(samples, spec, cache_dir=tmp_path / "cache")
    assert decode_calls == []  # rebuilt entries are valid again


def test_same_content_is_decoded_once_per_run(tmp_path, samples, decode_calls):
    twin = samples[0].path.with_name("twin.png")
    shutil.copy(samples[0].path, twin)
    images, labels = load_tensors(samples + [Sample(twin, None)], Preprocessing(size=32), cache_dir=tmp_path / "c")
    assert len(decode_calls) == 4
    assert torch.equal(images[0], images[4]) and labels[4].item() == -1


def test_without_a_cache_dir_no_decoded_image_is_written_anywhere(samples, tmp_path):
    """Decoded patient images stay out of the user's cache folder: only a caller's folder (the hospital
    home) receives them."""
    import os

    from core import paths

    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    images, _ = load_tensors(samples[:2], Preprocessing(size=16))
    assert images.shape == (2, 3, 16, 16)
    user_folders = [paths.cache_dir(), paths.data_dir(), paths.config_dir(), Path(os.environ["DOPAMINE_HOME"])]
    assert not any(list(folder.rglob("*.npy")) for folder in user_folders if folder.exists())
    assert {p for p in tmp_path.rglob("*") if p.is_file()} == before


def test_cache_size_and_clear_touch_only_cache_entries(samples, tmp_path):
    from core.home import HospitalHome
    from core.home import clear_image_cache as clear_cache
    from core.home import image_cache_usage as cache_size

    folder = HospitalHome(tmp_path / "home").image_cache
    assert cache_size(folder) == (0, 0)
    load_tensors(samples, Preprocessing(size=16), cache_dir=folder)
    entries, size = cache_size(folder)
    assert entries == len(samples) and size > entries * 3 * 16 * 16
    keep = folder / "README.txt"
    keep.write_text("not a cache entry")
    assert clear_cache(folder) == size
    assert cache_size(folder) == (0, 0) and keep.exists()
    assert [p.name for p in folder.iterdir()] == ["README.txt"]
    # Rebuilt from the images on the next run.
    again, _ = load_tensors(samples, Preprocessing(size=16), cache_dir=folder)
    assert HospitalHome(tmp_path / "home").image_cache_usage()[0] == len(samples) and again.shape[0] == len(samples)
    assert HospitalHome(tmp_path / "home").clear_image_cache() > 0


def test_bad_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("nope")
    with pytest.raises(DataError, match="broken.png.*inspect"):
        load_tensors([Sample(bad, 0)], Preprocessing(size=16), cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="gone.png"):
        load_tensors([Sample(tmp_path / "gone.png", 0)], Preprocessing(size=16), cache_dir=tmp_path / "c")
