"""The fused per-example gradients equal an independent reference (torch.func) on every layer path."""

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch import nn
from torch.func import functional_call, grad, vmap

from core.errors import PrivacyError
from core.privacy.per_sample import (
    _UNFOLD_MAX_OUTPUT_PIXELS,
    FusedGradSampleModule,
    GhostGradSample,
    clip_and_sum,
    declare_per_example_safe,
    materialize,
)


@declare_per_example_safe  # its forward acts on each example alone (reviewed)
class Mixed(nn.Module):
    """Every layer shape the fused mode distinguishes, plus a module used twice."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # kxk, large output: grouped backward
        self.pointwise = nn.Conv2d(8, 6, 1, stride=2)  # 1x1 strided: batched matmul
        self.norm = nn.GroupNorm(2, 6)
        self.dilated = nn.Conv2d(6, 6, 3, padding=2, dilation=2, bias=False)  # small output: unfold
        self.shared = nn.Conv2d(6, 6, 1)  # applied twice
        self.wide = nn.Conv2d(6, 64, 3, stride=2, padding=1)  # 3 x 3 output, many weights: ghost
        self.tokens = nn.Linear(4, 5)  # 3-D input: (batch, tokens, features)
        self.head = nn.Linear(64 * 5, 3)

    def forward(self, x):
        x = F.relu(self.norm(self.pointwise(F.relu(self.stem(x)))))
        x = self.wide(self.shared(F.relu(self.shared(self.dilated(x)))))
        x = self.tokens(x.flatten(2)[:, :, :4])  # (batch, 64 tokens, 5)
        return self.head(x.flatten(1))


def reference_grad_samples(model, x, y):
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xi, yi):
        return F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    return vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)


@pytest.mark.parametrize("ghost", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_matches_torch_func_reference(reduction, ghost):
    torch.manual_seed(0)
    model = Mixed()
    x, y = torch.randn(5, 3, 24, 24), torch.tensor([0, 1, 2, 1, 0])
    # 24 px in: the stem's output (12 x 12) takes the grouped-backward path, the dilated
    # convolution's (6 x 6) the unfold path.
    assert 12 * 12 > _UNFOLD_MAX_OUTPUT_PIXELS >= 6 * 6
    expected = reference_grad_samples(model, x, y)
    wrapped = FusedGradSampleModule(model, loss_reduction=reduction, ghost=ghost)
    F.cross_entropy(wrapped(x), y, reduction=reduction).backward()
    assert isinstance(model.wide.weight.grad_sample, GhostGradSample) == ghost
    assert isinstance(model.stem.weight.grad_sample, torch.Tensor)
    for name, p in model.named_parameters():
        assert p.grad is None  # no batch gradient is computed
        assert p.grad_sample.shape == expected[name].shape
        torch.testing.assert_close(materialize(p.grad_sample), expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # ghost norms and weighted sums agree with the explicit per-example gradients
    ghost_entry = model.wide.weight.grad_sample
    if ghost:
        explicit = expected["wide.weight"]
        torch.testing.assert_close(ghost_entry.sq_norms, explicit.flatten(1).pow(2).sum(1), rtol=1e-4, atol=1e-8)
        factors = torch.rand(5)
        torch.testing.assert_close(
            ghost_entry.weighted_sum(factors), torch.einsum("n,n...->...", factors, explicit), rtol=1e-4, atol=1e-6
        )


def test_clip_and_sum_is_the_same_with_and_without_ghost_entries():
    x, y = torch.randn(6, 3, 24, 24), torch.tensor([0, 1, 2, 1, 0, 2])
    torch.manual_seed(0)
    expected = reference_grad_samples(Mixed(), x, y)
    sums = []
    for ghost in (True, False):
        torch.manual_seed(0)
        model = Mixed()
        F.cross_entropy(FusedGradSampleModule(model, ghost=ghost)(x), y, reduction="sum").backward()
        sums.append(clip_and_sum(list(model.parameters()), max_grad_norm=0.05))
        assert all(s.grad_fn is None for s in sums[-1])
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in expected.values()))
    factors = (0.05 / (norms + 1e-6)).clamp(max=1.0)
    assert (factors < 1).any()
    for with_ghost, without, (name, g) in zip(*sums, expected.items(), strict=True):
        want = torch.einsum("n,n...->...", factors, g)
        torch.testing.assert_close(with_ghost, want, rtol=1e-4, atol=1e-7, msg=name)
        torch.testing.assert_close(without, want, rtol=1e-4, atol=1e-7, msg=name)


def test_ghost_module_used_twice_is_materialized():
    @declare_per_example_safe
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(32, 32, 3, padding=1)  # 2 x 2 output: ghost-eligible
            self.head = nn.Linear(32 * 4, 2)

        def forward(self, x):
            return self.head(self.conv(F.relu(self.conv(x))).flatten(1))

    torch.manual_seed(0)
    model = Twice()
    x, y = torch.randn(3, 32, 2, 2), torch.tensor([0, 1, 1])
    expected = reference_grad_samples(model, x, y)
    F.cross_entropy(FusedGradSampleModule(model)(x), y).backward()
    assert isinstance(model.conv.weight.grad_sample, torch.Tensor)
    torch.testing.assert_close(model.conv.weight.grad_sample, expected["conv.weight"], rtol=1e-4, atol=1e-6)


def test_small_cnn_last_stage_uses_ghost_entries():
    from core.models import build_model

    model = build_model("small_cnn")
    F.cross_entropy(FusedGradSampleModule(model)(torch.randn(2, 3, 32, 32)), torch.tensor([0, 1])).backward()
    assert isinstance(model.features[6][0].weight.grad_sample, GhostGradSample)  # 4 x 4 output, 64 x 576 weights
    assert isinstance(model.features[0][0].weight.grad_sample, torch.Tensor)


@pytest.mark.parametrize("name", ["squeezenet1_1", "resnet18_gn"])
def test_matches_opacus_hooks_on_registry_models(name):
    from core.models import build_model

    x, y = torch.randn(3, 3, 40, 40), torch.tensor([0, 4, 2])
    results = []
    for wrapper in (GradSampleModule, FusedGradSampleModule):
        torch.manual_seed(1)
        model = build_model(name)
        wrapped = wrapper(model)
        torch.manual_seed(2)  # same dropout masks
        F.cross_entropy(wrapped(x), y).backward()
        results.append({k: materialize(p.grad_sample) for k, p in model.named_parameters()})
    for key in results[0]:
        torch.testing.assert_close(results[1][key], results[0][key], rtol=1e-4, atol=1e-6, msg=key)


def test_input_gradients_are_unchanged():
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(2, 3, 24, 24, requires_grad=True)
    model(x).sum().backward()
    plain = x.grad.clone()
    x.grad = None
    FusedGradSampleModule(model)(x).sum().backward()
    torch.testing.assert_close(x.grad, plain)


def test_remove_hooks_restores_the_model():
    torch.manual_seed(0)
    model = Mixed()
    x = torch.randn(2, 3, 24, 24)
    before = model(x)
    wrapped = FusedGradSampleModule(model)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), before)
    wrapped.cleanup()
    assert not any("forward" in m.__dict__ for m in model.modules())
    model(x).sum().backward()
    assert all(p.grad is not None and not hasattr(p, "grad_sample") for p in model.parameters())


def test_empty_batch():
    model = Mixed()
    wrapped = FusedGradSampleModule(model)
    wrapped(torch.zeros(0, 3, 24, 24)).sum().backward()
    assert all(p.grad_sample.shape == (0, *p.shape) for p in model.parameters())
    # an empty Poisson batch clips to a zero sum (its step is then noise alone)
    sums = clip_and_sum(list(model.parameters()), 1.0)
    assert all(s.shape == p.shape and not s.any() for s, p in zip(sums, model.parameters(), strict=True))


def test_second_pass_accumulates_like_opacus():
    # Opacus keeps one tensor per backward pass in a list; its DPOptimizer concatenates them.
    torch.manual_seed(0)
    model = Mixed()
    first, second = (torch.randn(3, 3, 24, 24), torch.tensor([0, 1, 2])), (torch.randn(2, 3, 24, 24), torch.tensor([2, 0]))
    expected = [reference_grad_samples(model, x, y) for x, y in (first, second)]
    wrapped = FusedGradSampleModule(model)
    for x, y in (first, second):
        F.cross_entropy(wrapped(x), y).backward()
    for name, p in model.named_parameters():
        assert isinstance(p.grad_sample, list) and len(p.grad_sample) == 2
        for got, want in zip(p.grad_sample, expected, strict=True):
            torch.testing.assert_close(materialize(got), want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_is_refused_when_forbidden():
    wrapped = FusedGradSampleModule(Mixed())
    wrapped.forbid_grad_accumulation()
    wrapped(torch.randn(2, 3, 24, 24)).sum().backward()
    with pytest.raises(ValueError, match="gradient accumulation"):
        wrapped(torch.randn(2, 3, 24, 24))


@pytest.mark.parametrize(
    "layer", [nn.Conv2d(3, 6, 3, groups=3), nn.LayerNorm(4), nn.Conv2d(3, 3, 3, padding="same")]
)
def test_unsupported_layers_are_named(layer):
    with pytest.raises(PrivacyError, match="cannot handle .*use grad_sample_mode='hooks'"):
        FusedGradSampleModule(nn.Sequential(layer))


def test_frozen_layers_get_no_per_example_gradients():
    model = Mixed()
    model.stem.requires_grad_(False)
    FusedGradSampleModule(model)(torch.randn(2, 3, 24, 24)).sum().backward()
    assert getattr(model.stem.weight, "grad_sample", None) is None
    assert model.head.weight.grad_sample.shape == (2, 3, 320)
