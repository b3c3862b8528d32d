"""Per-example gradients computed *instead of* the batch gradient ("fused" grad-sample mode).

Opacus's default hooks let autograd compute the ordinary batch weight gradient and then compute
the per-example gradients a second time in a backward hook; expanded weights ("ew") skip the
batch gradient but compute input gradients with a transposed convolution and always unfold
(im2col) the input. On a CPU both cost a DP step 1.3-1.6x a plain step of SqueezeNet.

Here each trainable Conv2d, Linear and GroupNorm runs through an autograd Function whose
backward computes the input gradient with the same kernel a plain step uses
(``aten.convolution_backward`` with only the input output enabled) and the per-example weight
gradients with the cheapest kernel for the layer's shape, and returns no batch weight gradient.
The per-example gradients land in ``param.grad_sample`` as Opacus's own modes leave them.

Convolutions with a small output and many weights (ResNet's last stages) keep them implicit
instead (GhostGradSample, the "book-keeping" of Bu et al., 2023): each example's gradient norm
comes from Gram matrices of the unfolded input and the output gradient ("ghost norm", Goodfellow
2015; Li et al., 2022), and the clipped sum is one ordinary weight gradient of the output
gradient scaled per example by its clipping factor. Writing and re-reading millions of
per-example weights is what made those layers expensive. FusedDPOptimizer (Opacus's
DPOptimizer, able to clip such entries) and clip_and_sum handle both kinds.

The module's forward is swapped (per instance) only while a FusedGradSampleModule wraps it;
``remove_hooks()`` puts the original back.

Why one module (about 590 lines): the fused per-example gradients of each layer kind, their ghost
norms, the allow-list of layers that keep examples independent and the optimizer that clips them
share private invariants (generations, processed flags) that must change together.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from opacus.grad_sample.gsm_base import AbstractGradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from core.errors import PrivacyError
from core.models.resnet import BasicBlock, ResNet18GN
from core.models.small_cnn import SmallCNN
from core.models.squeezenet import Fire, SqueezeNet11
from core.privacy.noise import DPRandom

GRAD_SAMPLE_MODE = "fused"

# Per-example weight gradients of a kxk convolution, best kernel by shape (2-core x86 CPU,
# torch 2.13, batch 32, one thread, ms; "batch" is the plain batch weight gradient):
#   channels, size     batch  grouped-backward  unfold+bmm
#   3->64, 224 s2       74        30               82
#   16->64, 55          22        22               69
#   64->256, 13         20        20               45
#   128->128, 28        69        75              171
#   512->512, 7        102       702              397
# Folding the batch into convolution groups lets oneDNN compute every example's weight
# gradient in one call at about the cost of the batch gradient; only when the output is tiny
# does unfold + batched matmul win (and with many channels too, as in ResNet's last stage, the
# gradients are not materialized at all: see GhostGradSample).
_UNFOLD_MAX_OUTPUT_PIXELS = 64
# Parameter attribute: which forward pass (of the wrapper) its grad_sample was last written in.
_GENERATION = "_fused_generation"
# Marks the per-instance forward that FusedGradSampleModule installs (check_per_example_safe accepts it).
_FUSED_FORWARD = "_fused_per_sample_forward"

# What a layer Function's backward returns: the input's gradient, then None for each other argument
# of forward (weight, bias, module, scale, generation, ghost): weight gradients go to grad_sample.
_LayerGrads = tuple[torch.Tensor | None, None, None, None, None, None, None]
# Autograd's ctx is typed Any: the layer Functions keep their own fields on it between the passes.
_Ctx = Any


def _store(param: torch.Tensor, grad_sample: torch.Tensor | GhostGradSample, ctx: _Ctx) -> None:
    """Record one layer call's per-example gradients, Opacus's way.

    Within one forward pass a module used twice adds both contributions to each example's
    gradient; a second forward/backward pass without clearing appends its batch as a list
    element, which Opacus's DPOptimizer concatenates (gradient accumulation).
    """
    if not param.requires_grad:
        return
    if ctx.scale != 1 and isinstance(grad_sample, torch.Tensor):
        # Scaling the per-example result is cheaper than scaling the layer's output gradient.
        grad_sample.mul_(ctx.scale)
    existing = getattr(param, "grad_sample", None)
    # grad_sample is the attribute Opacus adds to parameters; torch's Tensor type does not declare it.
    if existing is None:
        param.grad_sample = grad_sample  # type: ignore[attr-defined]
    elif getattr(param, _GENERATION, None) == ctx.generation:
        # The norm of a sum is not the sum of norms: a module used twice is materialized.
        if isinstance(existing, list):
            existing[-1] = materialize(existing[-1]) + materialize(grad_sample)
        else:
            param.grad_sample = materialize(existing) + materialize(grad_sample)  # type: ignore[attr-defined]
    else:
        param.grad_sample = (  # type: ignore[attr-defined]
            [*existing, grad_sample] if isinstance(existing, list) else [existing, grad_sample]
        )
    setattr(param, _GENERATION, ctx.generation)


def _conv_weight_grad_sample(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    weight_shape: torch.Size,
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    n, in_ch = x.shape[:2]
    out_ch, _, kh, kw = weight_shape
    out_h, out_w = grad_out.shape[2:]
    if ((kh, kw) == (1, 1) and tuple(padding) == (0, 0)) or out_h * out_w <= _UNFOLD_MAX_OUTPUT_PIXELS:
        columns = _conv_columns(x, (kh, kw), stride, padding, dilation)
        return torch.bmm(grad_out.reshape(n, out_ch, -1), columns.transpose(1, 2)).view(n, out_ch, in_ch, kh, kw)
    # Only the weight's shape matters for a weight-only backward, so it need not be filled.
    grouped_weight = x.new_empty((n * out_ch, in_ch, kh, kw))
    grad_weight: torch.Tensor = torch.ops.aten.convolution_backward(
        grad_out.reshape(1, n * out_ch, out_h, out_w), x.reshape(1, n * in_ch, *x.shape[2:]),
        grouped_weight, None, stride, padding, dilation, False, [0, 0], n, [False, True, False],
    )[1]
    return grad_weight.view(n, out_ch, in_ch, kh, kw)


def _conv_columns(
    x: torch.Tensor,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> torch.Tensor:
    """The input as (examples, in_channels * kernel pixels, output pixels): what each output sees."""
    n, in_ch = x.shape[:2]
    if tuple(kernel_size) == (1, 1) and tuple(padding) == (0, 0):
        return x[:, :, :: stride[0], :: stride[1]].reshape(n, in_ch, -1)
    return F.unfold(x, kernel_size, dilation=dilation, padding=padding, stride=stride)


def _prefers_ghost(output_pixels: int, inputs_per_output: int, out_channels: int) -> bool:
    """Ghost norms cost T^2 (K + O) per example, materializing T K O (plus writing K O numbers):
    ghost wins when the output has fewer pixels T than about K O / (K + O)."""
    return output_pixels * (inputs_per_output + out_channels) < inputs_per_output * out_channels


class GhostGradSample:
    """The per-example gradients of one convolution weight, kept implicit (see module docstring).

    ``sq_norms[n]`` is example n's squared gradient norm; ``weighted_sum(factors)`` is
    sum_n factors[n] * gradient_n; ``materialize()`` gives the (examples, *weight.shape) tensor.
    """

    __slots__ = ("x", "grad_out", "scale", "weight_shape", "stride", "padding", "dilation", "sq_norms", "_processed")
    _processed: bool  # set by the optimizer once clipped, as Opacus marks its tensors

    def __init__(
        self,
        x: torch.Tensor,
        grad_out: torch.Tensor,
        scale: float,
        weight_shape: torch.Size,
        stride: tuple[int, ...],
        padding: tuple[int, ...],
        dilation: tuple[int, ...],
    ) -> None:
        # Detached: clipping happens later, in the optimizer, and must not extend the graph.
        x, grad_out = x.detach(), grad_out.detach()
        self.x, self.grad_out, self.scale = x, grad_out, scale
        self.weight_shape, self.stride, self.padding, self.dilation = weight_shape, stride, padding, dilation
        n, out_ch = grad_out.shape[:2]
        columns = _conv_columns(x, weight_shape[2:], stride, padding, dilation)
        outputs = grad_out.reshape(n, out_ch, -1)
        gram_in = torch.bmm(columns.transpose(1, 2), columns)
        gram_out = torch.bmm(outputs.transpose(1, 2), outputs)
        self.sq_norms = (gram_in * gram_out).sum(dim=(1, 2)).clamp_(min=0) * scale**2

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.weight_shape))

    def weighted_sum(self, factors: torch.Tensor) -> torch.Tensor:
        scaled = self.grad_out * (factors * self.scale).to(self.grad_out.dtype).view(-1, 1, 1, 1)
        grad_weight: torch.Tensor = torch.ops.aten.convolution_backward(
            scaled, self.x, self.x.new_empty(self.weight_shape), None, self.stride, self.padding,
            self.dilation, False, [0, 0], 1, [False, True, False],
        )[1]
        return grad_weight

    def materialize(self) -> torch.Tensor:
        grad_sample = _conv_weight_grad_sample(
            self.x, self.grad_out, self.weight_shape, self.stride, self.padding, self.dilation
        )
        return grad_sample.mul_(self.scale) if self.scale != 1 else grad_sample


def materialize(grad_sample: torch.Tensor | GhostGradSample) -> torch.Tensor:
    """A per-example gradient entry as a tensor (examples, *param.shape)."""
    return grad_sample.materialize() if isinstance(grad_sample, GhostGradSample) else grad_sample


def _entries(param: torch.Tensor) -> list[torch.Tensor | GhostGradSample]:
    grad_sample = getattr(param, "grad_sample", None)
    if grad_sample is None:
        raise ValueError("Per-example gradients are missing: run forward and backward through the wrapped model first.")
    return grad_sample if isinstance(grad_sample, list) else [grad_sample]


def clip_and_sum(
    params: list[torch.Tensor], max_grad_norm: float, out: list[torch.Tensor] | None = None
) -> list[torch.Tensor]:
    """For each parameter, the sum over examples of its per-example gradient times the example's
    clipping factor min(1, C / (||whole per-example gradient|| + 1e-6)) -- Opacus's flat clipping.

    Reads ``param.grad_sample`` (tensors, GhostGradSample entries, or lists of them: one per
    accumulated pass, examples in order). With ``out`` (contiguous tensors shaped like the
    parameters) the sums are added to it in place and it is returned.
    """
    entries = [_entries(p) for p in params]
    squared: torch.Tensor | None = None
    for param_entries in entries:
        per_param = torch.cat([
            # flatten(1), not reshape(len, -1): an empty Poisson batch has no rows to infer -1 from
            e.sq_norms if isinstance(e, GhostGradSample) else torch.linalg.vector_norm(e.flatten(1), dim=1) ** 2
            for e in param_entries
        ])
        squared = per_param if squared is None else squared + per_param
    assert squared is not None  # callers pass a model's trainable parameters, never an empty list
    factors = (max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
    if out is None:
        out = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
    for total, param_entries in zip(out, entries, strict=True):
        start = 0
        for entry in param_entries:
            chunk = factors[start : start + len(entry)]
            start += len(entry)
            if isinstance(entry, GhostGradSample):
                total += entry.weighted_sum(chunk).view_as(total)
            else:
                # total += sum_n chunk[n] * entry[n], without a temporary of the parameter's size
                total.view(-1).addmv_(entry.flatten(1).t(), chunk.to(entry.dtype))
    return out


def _empty_batch_backward(ctx: _Ctx, x: torch.Tensor) -> _LayerGrads:
    """Backward of a layer that saw no examples (Poisson sampling can draw an empty batch)."""
    module = ctx.module
    for index, name in ((1, "weight"), (2, "bias")):
        param = getattr(module, name, None)
        if param is not None and ctx.needs_input_grad[index]:
            _store(param, param.new_zeros((0, *param.shape)), ctx)
    grad_x = torch.zeros_like(x) if ctx.needs_input_grad[0] else None
    return grad_x, None, None, None, None, None, None


class _Conv2dPerSample(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: _Ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        module: nn.Conv2d,
        scale: float,
        generation: int,
        ghost: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.module, ctx.scale, ctx.generation, ctx.has_bias = module, scale, generation, bias is not None
        ctx.ghost = ghost
        return F.conv2d(x, weight, bias, module.stride, module.padding, module.dilation, module.groups)

    @staticmethod
    def backward(ctx: _Ctx, grad_out: torch.Tensor) -> _LayerGrads:
        x, weight = ctx.saved_tensors
        if x.shape[0] == 0:
            return _empty_batch_backward(ctx, x)
        module = ctx.module
        grad_out = grad_out.contiguous()
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, module.stride, module.padding, module.dilation,
                False, [0, 0], module.groups, [True, False, False],
            )[0]
        if ctx.needs_input_grad[1]:
            out_ch, in_ch, kh, kw = weight.shape
            grad_sample: torch.Tensor | GhostGradSample
            if ctx.ghost and _prefers_ghost(grad_out[0, 0].numel(), in_ch * kh * kw, out_ch):
                grad_sample = GhostGradSample(
                    x, grad_out, ctx.scale, weight.shape, module.stride, module.padding, module.dilation
                )
            else:
                grad_sample = _conv_weight_grad_sample(
                    x, grad_out, weight.shape, module.stride, module.padding, module.dilation
                )
            _store(module.weight, grad_sample, ctx)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            _store(module.bias, grad_out.sum(dim=(2, 3)), ctx)
        return grad_x, None, None, None, None, None, None


class _LinearPerSample(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: _Ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        module: nn.Linear,
        scale: float,
        generation: int,
        ghost: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.module, ctx.scale, ctx.generation, ctx.has_bias = module, scale, generation, bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: _Ctx, grad_out: torch.Tensor) -> _LayerGrads:
        x, weight = ctx.saved_tensors
        if x.shape[0] == 0:
            return _empty_batch_backward(ctx, x)
        module = ctx.module
        grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
        n = x.shape[0]
        # Inputs may have extra dimensions between batch and features (a sequence, say).
        grad_rows = grad_out.reshape(n, -1, grad_out.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_sample = torch.bmm(grad_rows.transpose(1, 2), x.reshape(n, -1, x.shape[-1]))
            _store(module.weight, grad_sample, ctx)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            _store(module.bias, grad_rows.sum(dim=1), ctx)
        return grad_x, None, None, None, None, None, None


class _GroupNormPerSample(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: _Ctx,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        module: nn.GroupNorm,
        scale: float,
        generation: int,
        ghost: bool,
    ) -> torch.Tensor:
        n, channels = x.shape[:2]
        hw = x[0, 0].numel() if n else 0
        x = x.contiguous()
        out: torch.Tensor
        out, mean, rstd = torch.ops.aten.native_group_norm(
            x, weight, bias, n, channels, hw, module.num_groups, module.eps
        )
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.module, ctx.scale, ctx.generation, ctx.dims = module, scale, generation, (n, channels, hw)
        return out

    @staticmethod
    def backward(ctx: _Ctx, grad_out: torch.Tensor) -> _LayerGrads:
        x, weight, mean, rstd = ctx.saved_tensors
        if x.shape[0] == 0:
            return _empty_batch_backward(ctx, x)
        module = ctx.module
        n, channels, hw = ctx.dims
        groups = module.num_groups
        grad_out = grad_out.contiguous()
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_group_norm_backward(
                grad_out, x, mean, rstd, weight, n, channels, hw, groups, [True, False, False]
            )[0]
        per_example = grad_out.reshape(n, channels, -1)
        if ctx.needs_input_grad[1]:
            normalized = (x.reshape(n, groups, -1) - mean.reshape(n, groups, 1)) * rstd.reshape(n, groups, 1)
            _store(module.weight, (per_example * normalized.reshape(n, channels, -1)).sum(dim=2), ctx)
        if ctx.needs_input_grad[2]:
            _store(module.bias, per_example.sum(dim=2), ctx)
        return grad_x, None, None, None, None, None, None


def _conv_supported(module: nn.Module) -> bool:
    return (
        isinstance(module, nn.Conv2d)  # always, by _FUNCTIONS's key: it narrows the type
        and module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


_FUNCTIONS: dict[type[nn.Module], tuple[type[torch.autograd.Function], Callable[[nn.Module], bool]]] = {
    nn.Conv2d: (_Conv2dPerSample, _conv_supported),
    nn.Linear: (_LinearPerSample, lambda m: True),
    nn.GroupNorm: (_GroupNormPerSample, lambda m: isinstance(m, nn.GroupNorm) and m.affine),
}


def unsupported_layers(model: nn.Module) -> list[str]:
    """Names of trainable layers the fused mode cannot handle (empty when it can run the model)."""
    names = []
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        entry = _FUNCTIONS.get(type(module))
        if entry is None or not entry[1](module):
            names.append(f"{name or 'model'} ({type(module).__name__})")
    return names


# Layers whose output for one example depends on that example alone, in training and in
# evaluation mode. By exact type: a subclass may override forward and mix the batch.
_INDEPENDENT_LAYERS: frozenset[type[nn.Module]] = frozenset({
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear,
    nn.GroupNorm, nn.LayerNorm,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.LogSigmoid,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout,
    nn.Identity, nn.Sequential, nn.ModuleList, nn.ModuleDict,
    # The registry's architectures and their blocks: their forward code is reviewed to act on
    # each example alone (per-image standardisation and LayerNorm, no batch statistics).
    SmallCNN, SqueezeNet11, Fire, ResNet18GN, BasicBlock,
})
# Layers that act on one dimension: independent unless that dimension is the batch's (0, or
# None, which Softmax resolves to 0 for 1-D and 3-D inputs).
_DIMENSION_LAYERS: dict[type[nn.Module], str] = {
    nn.Softmax: "dim", nn.LogSoftmax: "dim", nn.Softmin: "dim", nn.Flatten: "start_dim", nn.Unflatten: "dim",
}
_INSTANCE_NORMS = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)
# Classes added with declare_per_example_safe.
_DECLARED_LAYERS: set[type[nn.Module]] = set()


def _mixing_reason(module: nn.Module) -> str | None:
    """Why ``module`` may let one example change another's output (None when it cannot)."""
    kind = type(module)
    if isinstance(module, nn.modules.batchnorm._NormBase):  # BatchNorm*, SyncBatchNorm, InstanceNorm*...
        if kind in _INSTANCE_NORMS and not module.track_running_stats:
            return None  # each example normalised by its own statistics, in both modes
        # Batch statistics in training mode; in evaluation mode, running statistics pooled over
        # examples without noise (and kept in the model's state).
        return "normalises with statistics pooled over examples; use GroupNorm"
    if kind in _DIMENSION_LAYERS:
        dim = getattr(module, _DIMENSION_LAYERS[kind])
        if isinstance(dim, int) and dim >= 1:
            return None
        return f"acts across dimension {dim} (the batch's, or undetermined); give it a dimension >= 1"
    if kind not in _INDEPENDENT_LAYERS and kind not in _DECLARED_LAYERS:
        return "is not a layer known to keep examples independent; build the model from the registry's layers"
    return None


def declare_per_example_safe(layer: type[nn.Module]) -> type[nn.Module]:
    """Add a module class whose own forward code was reviewed to act on each example alone (no
    statistic, sort or sum across the batch) to the allow-list; usable as a class decorator.

    Its submodules are still checked one by one. Only the class itself is declared, not its
    subclasses (which may override forward).
    """
    if not (isinstance(layer, type) and issubclass(layer, nn.Module)):
        raise PrivacyError("Only nn.Module classes can be declared per-example safe; this is a software error.")
    _DECLARED_LAYERS.add(layer)
    return layer


def check_per_example_safe(model: nn.Module) -> None:
    """PrivacyError unless every module of ``model`` is known to keep examples independent.

    DP-SGD's sensitivity bound assumes that each example's gradient depends on that example
    alone; a layer that mixes the batch (BatchNorm, trainable or not, in training or evaluation
    mode) lets one added record move every other example's clipped gradient (issue #10: by 2.04
    with C = 1). So this is an allow-list: known layers, torch containers and the registry's
    models, by exact type; anything else, and any module whose forward was replaced on the
    instance or that carries hooks (Opacus's own excepted), is refused, named by its path in the
    model and its type.
    """
    if isinstance(model, AbstractGradSampleModule):
        model = model._module
    from torch.nn.modules import module as torch_module

    global_hooks = (torch_module._global_forward_pre_hooks, torch_module._global_forward_hooks,
                    torch_module._global_backward_pre_hooks, torch_module._global_backward_hooks)
    if any(global_hooks):
        raise PrivacyError(
            "This model cannot be trained with DP-SGD: a global module hook is registered, which may change "
            "what every layer computes; remove it."
        )
    for name, module in model.named_modules():
        reason = _mixing_reason(module) or _override_reason(module)
        if reason is not None:
            raise PrivacyError(
                f"This model cannot be trained with DP-SGD: {name or 'model'} ({type(module).__name__}) {reason}."
            )


def _override_reason(module: nn.Module) -> str | None:
    forward = module.__dict__.get("forward")
    if forward is not None and not getattr(getattr(forward, "__func__", None), _FUSED_FORWARD, False):
        return "has its forward replaced on the instance; use the layer as it is"
    hooks = [*module._forward_pre_hooks.values(), *module._forward_hooks.values(),
             *module._backward_pre_hooks.values(), *module._backward_hooks.values()]
    # Opacus's hooks mode registers its own (methods of the GradSampleModule, some in a partial):
    # they only record.
    if any(not isinstance(getattr(getattr(hook, "func", hook), "__self__", None), AbstractGradSampleModule)
           for hook in hooks):
        return "has hooks, which may change what it computes or its gradients; remove them"
    return None


class FusedGradSampleModule(AbstractGradSampleModule):  # type: ignore[misc]  # Opacus ships no types
    """Wraps a model so that ``loss.backward()`` leaves per-example gradients in ``p.grad_sample``.

    ``p.grad`` is not filled: DP-SGD never uses the unclipped batch gradient. With
    ``loss_reduction="mean"`` the loss is taken to be a mean over the batch, and the stored
    per-example gradients are those of each example's own loss (the same convention as Opacus).
    With ``ghost`` (the default) some convolution weights hold a GhostGradSample rather than a
    tensor: clip them with FusedDPOptimizer or clip_and_sum; ``ghost=False`` stores only tensors,
    for Opacus's own optimizers.
    """

    def __init__(
        self, m: nn.Module, *, batch_first: bool = True, loss_reduction: str = "mean", ghost: bool = True
    ) -> None:
        if not batch_first:
            raise PrivacyError("The fused per-example gradient mode needs batch-first inputs.")
        if loss_reduction not in ("mean", "sum"):
            raise PrivacyError(f"loss_reduction must be 'mean' or 'sum', not {loss_reduction!r}.")
        check_per_example_safe(m)
        unsupported = unsupported_layers(m)
        if unsupported:
            raise PrivacyError(
                f"The fused per-example gradient mode cannot handle {', '.join(unsupported[:3])}; "
                "use grad_sample_mode='hooks'."
            )
        super().__init__(m, batch_first=batch_first, loss_reduction=loss_reduction)
        self._forbid_accumulation = False
        self._generation = 0
        self.ghost = ghost
        self._patched: list[nn.Module] = []
        for module in m.modules():
            if type(module) in _FUNCTIONS and any(p.requires_grad for p in module.parameters(recurse=False)):
                module.forward = types.MethodType(_make_forward(self, _FUNCTIONS[type(module)][0]), module)
                self._patched.append(module)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:  # whatever the model returns
        if self._forbid_accumulation and torch.is_grad_enabled() and any(
            getattr(p, "grad_sample", None) is not None for p in self._module.parameters()
        ):
            raise ValueError(
                "Poisson sampling is not compatible with gradient accumulation: call optimizer.step() "
                "(or zero_grad()) after every forward/backward pass."
            )
        self._generation += 1
        return self._module(x, *args, **kwargs)

    def forbid_grad_accumulation(self) -> None:
        self._forbid_accumulation = True

    def allow_grad_accumulation(self) -> None:
        self._forbid_accumulation = False

    def remove_hooks(self) -> None:
        for module in self._patched:
            if "forward" in module.__dict__:
                del module.forward
        self._patched = []

    def cleanup(self) -> None:
        super().cleanup()
        for p in self._module.parameters():
            if hasattr(p, _GENERATION):
                delattr(p, _GENERATION)


def _make_forward(
    owner: FusedGradSampleModule, function: type[torch.autograd.Function]
) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    def forward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
        weight, bias = module.weight, getattr(module, "bias", None)
        output: torch.Tensor
        if not torch.is_grad_enabled():
            output = type(module).forward(module, x)
            return output
        # With a mean loss each example's gradient arrives divided by the batch size.
        scale = float(x.shape[0]) if owner.loss_reduction == "mean" else 1.0
        # torch leaves Function.apply unannotated.
        output = function.apply(  # type: ignore[no-untyped-call]
            x, weight, bias, module, scale, owner._generation, owner.ghost
        )
        return output

    setattr(forward, _FUSED_FORWARD, True)
    return forward


class FusedDPOptimizer(DPOptimizer):  # type: ignore[misc]  # Opacus ships no types
    """Opacus's DPOptimizer (skipped steps, accounting hook, the optimizer step) whose clipping
    also takes GhostGradSample entries (clip_and_sum), and whose noise comes from a DPRandom.

    The clipped sums of all parameters live in one flat buffer, so that the noise for all of
    them is drawn in one call and added in place: N(0, (sigma C)^2) per coordinate, drawn in
    float64 and snapped (core.privacy.noise). ``rng`` defaults to a fresh DPRandom.
    """

    def __init__(self, *args: Any, rng: DPRandom | None = None, **kwargs: Any) -> None:
        # Opacus's own generator and secure mode are not used: all randomness is the DPRandom's.
        kwargs.pop("generator", None)
        kwargs.pop("secure_mode", None)
        super().__init__(*args, generator=None, secure_mode=False, **kwargs)
        if len({(p.dtype, p.device) for p in self.params}) > 1:
            raise PrivacyError("The fused DP optimizer needs all parameters of one type on one device.")
        self.rng = rng if rng is not None else DPRandom()
        self._flat_summed: torch.Tensor | None = None

    @property
    def grad_samples(self) -> list[torch.Tensor | GhostGradSample | list[torch.Tensor | GhostGradSample]]:
        # Opacus reads this only to see whether there is anything to clip: no concatenation.
        return [p.grad_sample for p in self.params if getattr(p, "grad_sample", None) is not None]

    @property
    def accumulated_iterations(self) -> int:
        counts = {len(_entries(p)) for p in self.params}
        if len(counts) != 1:
            raise ValueError("Number of accumulated steps is inconsistent across parameters")
        return counts.pop()

    def clip_and_accumulate(self) -> None:
        for p in self.params:
            if any(getattr(entry, "_processed", False) for entry in _entries(p)):
                raise ValueError(
                    "Gradients haven't been cleared since the last optimizer step; "
                    "call optimizer.zero_grad() on each step."
                )
        if self._flat_summed is None:  # first physical batch of a logical one
            reference = self.params[0]
            self._flat_summed = torch.zeros(
                sum(p.numel() for p in self.params), dtype=reference.dtype, device=reference.device
            )
            chunks = torch.split(self._flat_summed, [p.numel() for p in self.params])
            for p, chunk in zip(self.params, chunks, strict=True):
                p.summed_grad = chunk.view_as(p)
        clip_and_sum(self.params, self.max_grad_norm, out=[p.summed_grad for p in self.params])
        for p in self.params:
            for entry in _entries(p):
                entry._processed = True  # type: ignore[union-attr]  # Opacus's mark on tensors

    def add_noise(self) -> None:
        if self._flat_summed is None or getattr(self._flat_summed, "_processed", False):
            raise ValueError("Gradients haven't been cleared since the last optimizer step; call optimizer.zero_grad().")
        flat = self._flat_summed
        self.rng.add_normal_(flat, self.noise_multiplier * self.max_grad_norm)
        flat._processed = True  # type: ignore[attr-defined]  # Opacus's mark on tensors
        for p in self.params:
            p.grad = p.summed_grad  # a view of the noised buffer

    def scale_grad(self) -> None:
        if self.loss_reduction == "mean":
            assert self._flat_summed is not None  # add_noise, which Opacus calls first, needs it
            self._flat_summed /= self.expected_batch_size * self.accumulated_iterations

    def zero_grad(self, set_to_none: bool = False) -> None:
        if not self._is_last_step_skipped:
            self._flat_summed = None
        super().zero_grad(set_to_none)
