"""Architectures: sizes, determinism, DP compatibility, weight files, Grad-CAM layer."""

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from safetensors.torch import save_file
from torch import nn

from core.errors import ModelError
from core.models import MODEL_NAMES, build_model, count_parameters, last_conv_layer
from core.privacy.per_sample import FusedGradSampleModule, materialize


def test_squeezenet_has_torchvision_parameter_count():
    assert count_parameters(build_model("squeezenet1_1", 5)) == 725_061
    # torchvision's squeezenet1_1() with its 1000 ImageNet classes has 1,235,496.
    assert count_parameters(build_model("squeezenet1_1", 1000)) == 1_235_496


def test_squeezenet_uses_torchvision_parameter_names():
    names = set(build_model("squeezenet1_1").state_dict())
    assert {"features.0.weight", "features.3.squeeze.weight", "features.12.expand3x3.bias", "classifier.1.weight"} <= names


def test_resnet18_gn_size_and_no_batchnorm():
    model = build_model("resnet18_gn")
    # torchvision resnet18 (11,689,512 with 1000 classes) minus the 1000-class head plus a 5-class one.
    assert count_parameters(model) == 11_689_512 - 513_000 + 512 * 5 + 5
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_no_inplace_activation(name):
    # Opacus hooks fail on in-place ReLU and ModuleValidator does not notice (DESIGN §8).
    for module in build_model(name).modules():
        assert not getattr(module, "inplace", False), module


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_and_opacus_validation(name):
    torch.manual_seed(0)
    model = build_model(name, 3)
    ModuleValidator.validate(model, strict=True)
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert out.shape == (2, 3)
    F.cross_entropy(out, torch.tensor([0, 2])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("wrapper", [GradSampleModule, FusedGradSampleModule])
def test_per_example_gradients_under_opacus_wrappers(name, wrapper):
    torch.manual_seed(0)
    model = build_model(name, 5)
    wrapped = wrapper(model)
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 4])
    F.cross_entropy(wrapped(x), y).backward()
    for p in model.parameters():
        assert p.grad_sample.shape == (3, *p.shape)
        assert torch.isfinite(materialize(p.grad_sample)).all()
    wrapped.cleanup()


def test_initialisation_is_deterministic_given_the_seed():
    for name in MODEL_NAMES:
        torch.manual_seed(7)
        first = build_model(name).state_dict()
        torch.manual_seed(7)
        second = build_model(name).state_dict()
        torch.manual_seed(8)
        third = build_model(name).state_dict()
        assert all(torch.equal(first[k], second[k]) for k in first)
        assert not all(torch.equal(first[k], third[k]) for k in first)


def test_initial_weights_from_safetensors(tmp_path):
    torch.manual_seed(1)
    source = build_model("small_cnn", 4)
    path = tmp_path / "init.safetensors"
    save_file(source.state_dict(), path)
    torch.manual_seed(2)
    model = build_model("small_cnn", 4, weights=path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())


def test_weights_for_another_head_are_refused(tmp_path):
    path = tmp_path / "five.safetensors"
    save_file(build_model("small_cnn", 5).state_dict(), path)
    with pytest.raises(ModelError, match=r"five.safetensors: tensor classifier\.(weight|bias) has shape \(5"):
        build_model("small_cnn", 3, weights=path)


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = tmp_path / "sq.safetensors"
    save_file(build_model("squeezenet1_1").state_dict(), path)
    with pytest.raises(ModelError, match="does not fit this architecture"):
        build_model("small_cnn", weights=path)


def test_non_finite_weights_are_refused(tmp_path):
    state = build_model("small_cnn").state_dict()
    state["classifier.bias"][0] = float("nan")
    save_file(state, tmp_path / "nan.safetensors")
    with pytest.raises(ModelError, match="NaN"):
        build_model("small_cnn", weights=tmp_path / "nan.safetensors")


def test_bad_weight_files(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    with pytest.raises(ModelError, match="junk.safetensors is not a valid"):
        build_model("small_cnn", weights=tmp_path / "junk.safetensors")
    with pytest.raises(ModelError, match="Cannot read"):
        build_model("small_cnn", weights=tmp_path / "missing.safetensors")


def test_unknown_architecture_and_bad_class_count():
    with pytest.raises(ModelError, match="Unknown model architecture 'vgg16'"):
        build_model("vgg16")
    with pytest.raises(ModelError, match="at least 2 classes"):
        build_model("small_cnn", 1)


@pytest.mark.parametrize(("name", "channels"), [("squeezenet1_1", 512), ("resnet18_gn", 512), ("small_cnn", 64)])
def test_last_conv_layer_feeds_the_classifier(name, channels):
    model = build_model(name)
    layer = last_conv_layer(model)
    captured = []
    layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    model(torch.randn(1, 3, 64, 64))
    assert captured[0].dim() == 4 and captured[0].shape[1] == channels
    assert last_conv_layer(GradSampleModule(model)) is layer


def test_last_conv_layer_of_a_foreign_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3), nn.Flatten())
    assert last_conv_layer(model) is model[1]
    with pytest.raises(ModelError):
        last_conv_layer(nn.Linear(3, 2))
