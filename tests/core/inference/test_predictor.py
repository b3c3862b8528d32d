"""Predictions: same as a direct forward pass, with the training preprocessing, refusing forged models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from core.data import Preprocessing, load_image, normalize
from core.data.cache import load_tensors
from core.data.dataset import Sample
from core.data.preprocess import preprocess
from core.errors import DataError, ModelPackageError, SignatureError
from core.inference import open_model
from core.models.package import ModelCard, load_model, read_package, write_package
from core.models.registry import build_model
from core.signing import generate_private_key


def test_prediction_equals_direct_forward_pass(package_path, tmp_path, kit):
    predictor = open_model(package_path)
    image_path = tmp_path / "eye.png"
    kit.random_image(7).save(image_path)

    prediction = predictor.predict_file(image_path)

    # An independent route: read the package again, load the model, preprocess by hand.
    package = read_package(package_path)
    model = load_model(package)
    x = preprocess(load_image(image_path), Preprocessing.from_dict(package.card.preprocessing)).unsqueeze(0)
    with torch.no_grad():
        expected = torch.softmax(model(x), dim=1)[0].numpy()
    got = np.array([prediction.probabilities[c] for c in package.card.classes])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert prediction.predicted_index == int(expected.argmax())
    assert prediction.predicted_class == package.card.classes[int(expected.argmax())]
    assert prediction.signature_verified is True
    assert prediction.model_sha256 == package.sha256
    assert prediction.file == str(image_path)


def test_preprocessing_is_the_training_pipeline_with_the_cards_settings(tmp_path, kit):
    spec = Preprocessing(size=40, resize=52, mean=(0.3, 0.4, 0.5), std=(0.2, 0.25, 0.3))
    predictor = open_model(kit.make_package(tmp_path / "m.dpm", spec=spec))
    assert predictor.spec == spec
    image_path = tmp_path / "x.png"
    kit.random_image(11, (90, 61)).save(image_path)

    # Training reads images through the cache (uint8) and normalizes per batch.
    uint8, _ = load_tensors([Sample(image_path, 0)], spec, cache_dir=tmp_path / "cache")
    training_input = normalize(uint8, spec)
    inference_input = predictor.input_tensor(load_image(image_path))
    assert inference_input.shape == (1, 3, 40, 40)
    assert torch.equal(inference_input, training_input)


def test_dr_models_summarise_referable_retinopathy(package_path, kit):
    prediction = open_model(package_path).predict_image(kit.random_image(3))
    probabilities = list(prediction.probabilities.values())
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-5)
    assert prediction.referable_dr_probability == pytest.approx(sum(probabilities[2:]), abs=1e-6)
    assert prediction.referable_dr == (prediction.referable_dr_probability >= 0.5)
    out = prediction.to_dict()
    assert set(out) >= {"file", "predicted_class", "probabilities", "model_sha256", "signature_verified"}
    assert list(out["probabilities"]) == ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]


def test_other_models_have_no_referable_summary(tmp_path, kit):
    predictor = open_model(kit.make_package(tmp_path / "xray.dpm", classes=["normal", "pneumonia"]))
    prediction = predictor.predict_image(kit.random_image(1))
    assert prediction.referable_dr_probability is None and prediction.referable_dr is None
    assert "referable_dr" not in prediction.to_dict()
    assert set(prediction.probabilities) == {"normal", "pneumonia"}


def test_tampered_model_is_refused_by_default(tampered_path):
    with pytest.raises(SignatureError, match="forged.dpm"):
        open_model(tampered_path)


def test_tampered_model_opens_only_when_allowed_and_is_marked(tampered_path, kit):
    predictor = open_model(tampered_path, allow_unverified=True)
    assert predictor.signature_verified is False
    prediction = predictor.predict_image(kit.random_image(2))
    assert prediction.signature_verified is False
    assert prediction.to_dict()["signature_verified"] is False


def test_valid_signature_and_trusted_signer_are_two_facts(package_path, tampered_path, kit):
    from core.models.trust import TrustedSigner

    signer = read_package(package_path).signer_public_key
    unknown = open_model(package_path)  # nobody said whom to trust
    assert unknown.signature_verified and not unknown.signer_trusted
    out = unknown.predict_image(kit.random_image(2)).to_dict()
    assert out["signature_verified"] is True and out["signer_trusted"] is False
    assert out["signer_fingerprint"] == unknown.signer_fingerprint != ""
    with pytest.raises(SignatureError, match="dopamine trust add"):
        open_model(package_path, require_trusted=True)

    trust = {signer: TrustedSigner(signer, unknown.signer_fingerprint, "Sender", "added by user", "test")}
    trusted = open_model(package_path, trust=trust, require_trusted=True)
    assert trusted.signer_trusted and trusted.predict_image(kit.random_image(2)).to_dict()["signer_trusted"] is True
    # The forged copy names the same trusted key, but its signature fails: it is refused, never trusted.
    with pytest.raises(SignatureError):
        open_model(tampered_path, trust=trust, require_trusted=True)
    forged = open_model(tampered_path, trust=trust, allow_unverified=True)
    assert not forged.signature_verified and not forged.signer_trusted


def test_png_jpeg_and_dicom_all_predict(package_path, tmp_path, kit):
    predictor = open_model(package_path)
    image = kit.random_image(5, (64, 64))
    image.save(tmp_path / "a.png")
    image.save(tmp_path / "a.jpg", quality=90)
    grey = np.asarray(image.convert("L"))
    kit.write_dicom(tmp_path / "a.dcm", grey)
    kit.write_dicom(tmp_path / "extensionless", grey)
    for name in ("a.png", "a.jpg", "a.dcm", "extensionless"):
        prediction = predictor.predict_file(tmp_path / name)
        assert sum(prediction.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    # The DICOM is the PNG's grey version: it must predict exactly like that grey image.
    dicom = predictor.predict_file(tmp_path / "a.dcm").probabilities
    grey_png = predictor.predict_image(image.convert("L").convert("RGB")).probabilities
    assert dicom == pytest.approx(grey_png, abs=1e-6)


def test_corrupt_file_is_a_data_error(package_path, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(DataError, match="bad.png"):
        open_model(package_path).predict_file(tmp_path / "bad.png")


def test_input_size_follows_the_card(package_path, kit):
    predictor = open_model(package_path)
    assert predictor.input_tensor(kit.random_image(1, (200, 100))).shape == (1, 3, kit.SIZE, kit.SIZE)
    assert predictor.model_view(kit.random_image(1, (200, 100))).size == (kit.SIZE, kit.SIZE)


def test_crop_box_is_the_region_the_model_sees(package_path):
    predictor = open_model(package_path)
    # A smooth image, so that crop-then-resize and resize-then-crop agree up to interpolation.
    ys, xs = np.mgrid[0:90, 0:150]
    pixels = np.stack([xs * 255 // 149, ys * 255 // 89, (xs + ys) * 255 // 238], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels)
    left, top, width, height = predictor.crop_box(image.size)
    assert width == pytest.approx(height, rel=0.05) and 0 < left and left + width <= 150
    cropped = image.crop((round(left), round(top), round(left + width), round(top + height))).resize((32, 32))
    difference = np.abs(np.asarray(cropped, int) - np.asarray(predictor.model_view(image), int))
    assert difference.mean() < 3


def test_invalid_preprocessing_in_the_card_is_a_package_error(tmp_path):
    card = ModelCard(
        architecture="small_cnn", classes=["a", "b"], preprocessing={"size": 4, "colour": "yes"}, mode="c",
        epsilon=None, delta=None, accountant=None, noise_multiplier=None, sample_rate=None, max_grad_norm=None,
        steps=None, rounds=None, hospitals=None, image_counts={}, metrics={}, created="2026-01-01T00:00:00Z",
        software_version="0.1.0",
    )
    torch.manual_seed(0)
    write_package(tmp_path / "odd.dpm", build_model("small_cnn", 2).state_dict(), card, generate_private_key())
    with pytest.raises(ModelPackageError, match="odd.dpm: the model card's preprocessing is invalid"):
        open_model(tmp_path / "odd.dpm")
