"""The fundus crop: the retina's disc found under different cameras' framing, the crop it gives, the
fallback without a dark surround, and the option's place in the model card."""

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import Preprocessing, Sample, load_tensors, normalize, resize_crop
from core.data.fundus import find_disc
from core.data.preprocess import prepare, preprocess
from core.data.synthetic import camera_photograph
from core.errors import ConfigError

# (width, height, centre, radius, surround level): centred, off-centre, small, large, cut top and bottom
# (the usual 4:3 sensor with a wide field), cut on the left, cut on three sides, a grey-ish surround.
FRAMINGS = [
    (800, 600, (400, 300), 280, 6),
    (1000, 700, (610, 330), 300, 20),
    (900, 900, (450, 450), 150, 2),
    (640, 480, (320, 240), 300, 4),
    (1200, 800, (450, 420), 500, 12),
    (700, 500, (120, 250), 220, 5),
    (600, 600, (300, 300), 330, 0),
    (500, 400, (260, 190), 160, 28),
]


@pytest.mark.parametrize("framing", FRAMINGS, ids=[f"{w}x{h}@{c}r{r}" for w, h, c, r, _ in FRAMINGS])
def test_the_disc_is_found_within_a_few_per_cent(framing):
    width, height, centre, radius, surround = framing
    image = camera_photograph(2, width=width, height=height, centre=centre, radius=radius, seed=width,
                              surround=surround, label="OS 45deg 2026-01-02")
    search = find_disc(image)
    assert search.disc is not None, search.reason
    disc = search.disc
    assert abs(disc.cx - centre[0]) / radius < 0.02
    assert abs(disc.cy - centre[1]) / radius < 0.02
    assert abs(disc.radius - radius) / radius < 0.03
    cut = (centre[0] - radius < 0 or centre[1] - radius < 0 or centre[0] + radius > width
           or centre[1] + radius > height)
    assert disc.partial == cut


def test_no_dark_surround_falls_back_to_the_plain_pipeline():
    # An already-cropped retina: the frame is all retina, nothing dark around it.
    full = camera_photograph(1, width=400, height=400, centre=(200, 200), radius=300, seed=3)
    flat = Image.new("RGB", (300, 200), (120, 120, 120))
    for image in (full, flat):
        search = find_disc(image)
        assert search.disc is None and search.reason
        spec = Preprocessing(size=64, fundus_crop=True)
        prepared = prepare(image, spec)
        assert prepared.fell_back
        assert torch.equal(prepared.tensor(), resize_crop(image, Preprocessing(size=64)))


def test_crop_puts_the_retina_in_the_same_place_whatever_the_camera():
    """The same retina framed by two cameras: the fundus crop gives nearly the same input, the plain
    resize-and-centre-crop does not."""
    wide = camera_photograph(3, width=1000, height=700, centre=(620, 340), radius=300, seed=9)
    tight = camera_photograph(3, width=520, height=520, centre=(260, 260), radius=240, seed=9, surround=14)
    on, off = Preprocessing(size=96, fundus_crop=True), Preprocessing(size=96)

    def difference(spec):
        a = resize_crop(wide, spec).float()
        b = resize_crop(tight, spec).float()
        return (a - b).abs().mean().item()

    assert difference(on) < 12
    assert difference(off) > 2 * difference(on)


def test_cropped_retina_is_centred_and_fills_the_square():
    image = camera_photograph(0, width=900, height=600, centre=(300, 330), radius=260, seed=5)
    spec = Preprocessing(size=128, fundus_crop=True, crop_margin=0.05)
    prepared = prepare(image, spec)
    assert prepared.image.size == (128, 128)
    found = find_disc(prepared.image).disc
    assert found is not None
    assert abs(found.cx - 64) < 2 and abs(found.cy - 64) < 2
    assert abs(found.radius - 64 / 1.05) / (64 / 1.05) < 0.04
    left, top, width, height = prepared.box
    assert abs(left + width / 2 - 300) < 6 and abs(top + height / 2 - 330) < 6 and abs(width - 2 * 260 * 1.05) < 12


def test_partial_disc_is_padded_not_stretched():
    image = camera_photograph(2, width=800, height=520, centre=(400, 260), radius=330, seed=1)  # cut top/bottom
    prepared = prepare(image, Preprocessing(size=100, fundus_crop=True, crop_margin=0.0))
    pixels = np.asarray(prepared.image).astype(int)
    # The square is the full circle: the rows above and below the frame are black padding.
    assert pixels[:5].max() < 30 and pixels[-5:].max() < 30
    assert pixels[45:55, 45:55].mean() > 60


def test_local_contrast_normalisation():
    image = camera_photograph(2, width=600, height=500, centre=(300, 250), radius=220, seed=2)
    spec = Preprocessing(size=96, fundus_crop=True, local_contrast=True)
    pixels = np.asarray(prepare(image, spec).image).astype(int)
    # Outside the retina: the neutral 128; inside: centred on 128 (illumination removed).
    assert np.all(pixels[0, 0] == 128) and np.all(pixels[-1, -1] == 128)
    assert abs(pixels[30:66, 30:66].mean() - 128) < 15
    plain = np.asarray(prepare(image, Preprocessing(size=96, local_contrast=True)).image)
    assert plain.shape == (96, 96, 3)


def test_options_live_in_the_model_card_and_old_cards_still_read():
    spec = Preprocessing(size=64, fundus_crop=True, crop_margin=0.1, local_contrast=True)
    card = spec.to_dict()
    assert card["fundus_crop"] is True and card["crop_margin"] == 0.1 and card["local_contrast"] is True
    assert Preprocessing.from_dict(card).to_dict() == card
    # A card written before the option existed (and a default card now) has none of the new keys.
    old = {"size": 64, "resize": 73, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert Preprocessing(size=64).to_dict() == old
    assert Preprocessing.from_dict(old).fundus_crop is False
    with pytest.raises(ConfigError):
        Preprocessing(size=64, crop_margin=2.0)
    with pytest.raises(ConfigError):
        Preprocessing.from_dict({**old, "fundus_crop": "yes"})


def test_training_tensors_and_inference_input_are_identical_with_the_option_on(tmp_path):
    spec = Preprocessing(size=48, fundus_crop=True, local_contrast=True)
    paths = []
    for index, (width, height, centre, radius, surround) in enumerate(FRAMINGS[:3]):
        path = tmp_path / f"eye{index}.png"
        camera_photograph(index, width=width, height=height, centre=centre, radius=radius, seed=index,
                          surround=surround).save(path)
        paths.append(path)
    samples = [Sample(path, 0) for path in paths]
    cold, _ = load_tensors(samples, spec, cache_dir=tmp_path / "cache")
    warm, _ = load_tensors(samples, spec, cache_dir=tmp_path / "cache")
    assert torch.equal(cold, warm)
    from core.data import load_image

    for index, path in enumerate(paths):
        assert torch.equal(normalize(cold[index], spec), preprocess(load_image(path), spec))
    # The option changes the cache key: the plain pipeline's entries are not reused.
    plain, _ = load_tensors(samples, Preprocessing(size=48), cache_dir=tmp_path / "cache")
    assert not torch.equal(plain, cold)
