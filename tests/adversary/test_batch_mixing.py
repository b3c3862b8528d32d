"""Issue #10, point 7: layers that mix the examples of a batch must not reach DP-SGD.

DP-SGD bounds one record's influence by clipping each example's gradient, which assumes that
example's gradient depends on it alone. Batch normalisation breaks that whether or not it has
trainable parameters and in either mode: with BatchNorm2d(affine=False) one added record moved
the clipped sum of the others by 2.04 with C = 1 (issue #10). Before, only trainable modules were
checked. Now only layers known to keep examples independent are accepted, in every path.
"""

import pytest
import torch
import torch.nn.functional as F
from opacus import GradSampleModule
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.errors import PrivacyError
from core.models import MODEL_NAMES, build_model
from core.privacy.dpsgd import GRAD_SAMPLE_MODES, clipped_gradient_sum, make_private
from core.privacy.per_sample import FusedGradSampleModule, check_per_example_safe


class BatchCentering(nn.Module):
    """No parameters, an innocent name: subtracts the batch mean (an unknown module)."""

    def forward(self, x):
        return x - x.mean(dim=0, keepdim=True)


class QuietConv(nn.Conv2d):
    """A subclass of an allowed layer can override forward: it is not the allowed type."""

    def forward(self, x):
        return super().forward(x - x.mean(dim=0, keepdim=True))


def net(middle: nn.Module, first: nn.Module | None = None) -> nn.Sequential:
    return nn.Sequential(first or nn.Conv2d(3, 4, 3), middle, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3))


def frozen(module: nn.Module) -> nn.Module:
    return module.requires_grad_(False)


def bad_models():
    bn_eval = net(nn.BatchNorm2d(4))
    bn_eval.eval()
    return {
        "batchnorm-affine-false": (net(nn.BatchNorm2d(4, affine=False)), r"1 \(BatchNorm2d\)"),
        "frozen-batchnorm": (net(frozen(nn.BatchNorm2d(4))), r"1 \(BatchNorm2d\)"),
        "batchnorm-eval": (bn_eval, r"1 \(BatchNorm2d\)"),
        "instancenorm-running-stats": (net(nn.InstanceNorm2d(4, track_running_stats=True)), r"1 \(InstanceNorm2d\)"),
        "sync-batchnorm": (net(nn.SyncBatchNorm(4)), r"1 \(SyncBatchNorm\)"),
        "unknown-module": (net(BatchCentering()), r"1 \(BatchCentering\)"),
        "subclass-of-conv": (net(nn.Identity(), first=QuietConv(3, 4, 3)), r"0 \(QuietConv\)"),
        "softmax-over-batch": (net(nn.Softmax(dim=0)), r"1 \(Softmax\)"),
        "flatten-batch": (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(0), nn.Unflatten(0, (-1, 144)),
                                        nn.Linear(144, 3)), r"1 \(Flatten\)"),
    }


BAD = sorted(bad_models())


def data(n=6):
    generator = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 8, 8, generator=generator), torch.randint(0, 3, (n,), generator=generator)


def test_batchnorm_without_parameters_mixes_examples():
    # Why it must be refused: example 0's gradient changes when another record joins the batch.
    torch.manual_seed(0)
    model = net(nn.BatchNorm2d(4, affine=False))
    x, y = data()

    def grad_of_first(batch_x, batch_y):
        model.zero_grad()
        F.cross_entropy(model(batch_x), batch_y, reduction="none")[0].backward()
        return model[0].weight.grad.clone()

    assert not torch.allclose(grad_of_first(x[:5], y[:5]), grad_of_first(x, y), atol=1e-4)


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("mode", ["fused", "hooks", "ew"])
def test_clipped_gradient_sum_refuses(case, mode):
    model, name = bad_models()[case]
    x, y = data()
    with pytest.raises(PrivacyError, match=f"cannot be trained with DP-SGD: {name}"):
        clipped_gradient_sum(model, x, y, max_grad_norm=1.0, grad_sample_mode=mode)
    with pytest.raises(PrivacyError, match=name):  # an empty batch too
        clipped_gradient_sum(model, x[:0], y[:0], max_grad_norm=1.0, grad_sample_mode=mode)


@pytest.mark.parametrize("case", BAD)
@pytest.mark.parametrize("mode", GRAD_SAMPLE_MODES)
def test_make_private_refuses(case, mode):
    model, name = bad_models()[case]
    loader = DataLoader(TensorDataset(*data()), batch_size=3)
    with pytest.raises(PrivacyError, match=f"cannot be trained with DP-SGD: {name}"):
        make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader, noise_multiplier=1.0,
                     max_grad_norm=1.0, grad_sample_mode=mode)


@pytest.mark.parametrize("case", BAD)
def test_the_fused_module_refuses(case):
    model, name = bad_models()[case]
    with pytest.raises(PrivacyError, match=name):
        FusedGradSampleModule(model)


def test_a_forward_replaced_on_the_instance_or_hooked_is_refused():
    patched = net(nn.Identity())
    patched[0].forward = lambda x: nn.Conv2d.forward(patched[0], x - x.mean(0))
    hooked = net(nn.Identity())
    hooked[1].register_forward_hook(lambda module, inputs, output: output - output.mean(0))
    backward_hooked = net(nn.Identity())
    backward_hooked[1].register_full_backward_hook(lambda module, grad_in, grad_out: (grad_in[0].mean(0).expand_as(
        grad_in[0]),))
    x, y = data()
    for model, name in ((patched, r"0 \(Conv2d\) has its forward replaced"), (hooked, r"1 \(Identity\) has hooks"),
                        (backward_hooked, r"1 \(Identity\) has hooks")):
        with pytest.raises(PrivacyError, match=name):
            clipped_gradient_sum(model, x, y, max_grad_norm=1.0)
    handle = nn.modules.module.register_module_forward_hook(lambda module, inputs, output: output)
    try:
        with pytest.raises(PrivacyError, match="global module hook"):
            clipped_gradient_sum(net(nn.Identity()), x, y, max_grad_norm=1.0)
    finally:
        handle.remove()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_registry_models_are_accepted(name):
    model = build_model(name, num_classes=3)
    check_per_example_safe(model)
    check_per_example_safe(model.eval())
    model.train()
    loader = DataLoader(TensorDataset(torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))), batch_size=2)
    for mode in ("fused", "hooks"):
        wrapped, _, _ = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), loader,
                                     noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
        wrapped._close()


def test_a_model_already_wrapped_by_opacus_keeps_its_hooks_accepted():
    model = build_model("small_cnn", num_classes=3)
    wrapped = GradSampleModule(model)
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
    assert clipped_gradient_sum(wrapped, x, y, max_grad_norm=1.0)
    _, optimizer, _ = make_private(wrapped, torch.optim.SGD(model.parameters(), lr=0.1),
                                   DataLoader(TensorDataset(x, y), batch_size=2), noise_multiplier=1.0,
                                   max_grad_norm=1.0, grad_sample_mode="hooks")
    assert optimizer.noise_multiplier == 1.0
    wrapped._close()


def test_per_example_layers_stay_accepted():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4), nn.GELU(), nn.Dropout(0.1),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 3), nn.LogSoftmax(dim=1))
    x, y = data()
    total = clipped_gradient_sum(model, x, y, max_grad_norm=1.0, grad_sample_mode="hooks",
                                 loss_fn=lambda out, t: F.nll_loss(out, t, reduction="none"))
    assert torch.sqrt(sum(v.pow(2).sum() for v in total.values())) <= 6 * (1 + 1e-5)
