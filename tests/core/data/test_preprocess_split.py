import numpy as np
import pytest
import torch
from PIL import Image

from core.data import Preprocessing, normalize, resize_crop, stratified_split
from core.data.preprocess import preprocess
from core.errors import ConfigError, DataError


def test_defaults_and_dict_round_trip():
    spec = Preprocessing()
    assert spec.size == 224 and spec.resize_to == 256
    data = spec.to_dict()
    assert data == {"size": 224, "resize": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert Preprocessing.from_dict(data) == Preprocessing(size=224, resize=256)
    assert Preprocessing(size=64).resize_to == 73


@pytest.mark.parametrize("bad", [{"size": 4}, {"size": 64, "resize": 32}, {"std": [1, 0, 1]},
                                 {"mean": [0.5]}, {"colour": "rgb"}, {"size": "big"}])
def test_invalid_settings(bad):
    with pytest.raises(ConfigError):
        Preprocessing.from_dict(bad)


def test_resize_crop_takes_the_centre():
    # 300x100: left third red, middle third green, right third blue -> the crop is the green middle.
    array = np.zeros((100, 300, 3), np.uint8)
    array[:, :100, 0] = 255
    array[:, 100:200, 1] = 255
    array[:, 200:, 2] = 255
    out = resize_crop(Image.fromarray(array), Preprocessing(size=32, resize=40))
    assert out.dtype == torch.uint8 and out.shape == (3, 32, 32)
    assert out[1].float().mean() > 250 and out[0].float().mean() < 5 and out[2].float().mean() < 5


def test_small_and_grey_images_are_upscaled_to_rgb():
    out = resize_crop(Image.new("L", (10, 20), 90), Preprocessing(size=32))
    assert out.shape == (3, 32, 32) and int(out.min()) == int(out.max()) == 90


def test_preprocess_is_normalize_of_resize_crop():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (57, 83, 3), dtype=np.uint8))
    spec = Preprocessing(size=48, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    single = preprocess(image, spec)
    assert single.dtype == torch.float32 and single.shape == (3, 48, 48)
    assert torch.equal(single, normalize(resize_crop(image, spec), spec))
    batch = normalize(torch.stack([resize_crop(image, spec)] * 2), spec)  # batches normalize identically
    assert torch.equal(batch[1], single)
    expected = (resize_crop(image, spec)[0, 3, 5].item() / 255 - 0.5) / 0.2
    assert single[0, 3, 5].item() == pytest.approx(expected, abs=1e-6)


def test_normalize_refuses_floats():
    with pytest.raises(DataError):
        normalize(torch.zeros(3, 8, 8), Preprocessing(size=8))


def test_split_is_deterministic_and_stratified():
    labels = [0] * 50 + [1] * 10 + [2] * 27 + [3] * 2 + [4] * 1
    train, val = stratified_split(labels, 0.2, seed=7)
    assert (train, val) == stratified_split(labels, 0.2, seed=7)
    assert stratified_split(labels, 0.2, seed=8) != (train, val)
    assert sorted(train + val) == list(range(len(labels)))
    val_counts = np.bincount([labels[i] for i in val], minlength=5).tolist()
    assert val_counts == [10, 2, 5, 1, 0]  # each class in proportion; the single grade-4 image trains
    train_counts = np.bincount([labels[i] for i in train], minlength=5).tolist()
    assert train_counts == [40, 8, 22, 1, 1]


def test_split_edge_cases():
    assert stratified_split([0, 0, 1, 1], 0.01, seed=0)[1] != []  # at least one per class of two
    assert stratified_split([0, 1, 2], 0.0, seed=0) == ([0, 1, 2], [])
    for bad in (-0.1, 1.0):
        with pytest.raises(ConfigError):
            stratified_split([0, 1], bad, seed=0)
