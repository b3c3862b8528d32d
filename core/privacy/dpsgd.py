"""DP-SGD building blocks: Opacus's PrivacyEngine for local training, and the per-hospital step
of a Dopamine (FSCDP) round.

Per-example gradients come from the "fused" grad-sample mode (core.privacy.per_sample) unless
another Opacus mode is asked for: it computes them in place of the batch gradient, and keeps
those of small-output convolutions implicit (ghost norms), which brought a DP step on a CPU
close to a plain one (benchmarks/dp_step.py), where Opacus's hooks cost 1.3-2.9x.

Randomness: Opacus's own secure mode needs torchcsprng, which has no build for this torch. We
use instead a torch.Generator seeded with 64 bits from os.urandom (unless the caller passes one,
as tests do): the seed is unpredictable, but the generator itself (Mersenne Twister) is not a
cryptographic one. Noise is drawn Opacus's floating-point-attack-resistant way (the sum of four
Gaussians, halved; Holohan et al. 2021), which Opacus enables with secure_mode.
"""

from __future__ import annotations

import math
import os
import warnings

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.gsm_base import AbstractGradSampleModule
from opacus.grad_sample.utils import get_gsm_class
from opacus.validators import ModuleValidator
from opacus.validators.errors import IllegalModuleConfigurationError, UnsupportedModuleError
from torch import nn
from torch.utils.data import DataLoader

from core.errors import PrivacyError
from core.privacy.per_sample import GRAD_SAMPLE_MODE, FusedDPOptimizer, FusedGradSampleModule, clip_and_sum

GRAD_SAMPLE_MODES = (GRAD_SAMPLE_MODE, "hooks", "ew", "functorch")
DEFAULT_GRAD_SAMPLE_MODE = GRAD_SAMPLE_MODE


def secure_generator(device: str | torch.device = "cpu") -> torch.Generator:
    """A torch.Generator seeded from os.urandom (see the module docstring for what that buys)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int.from_bytes(os.urandom(8), "little"))
    return generator


class _UrandomPrivacyEngine(PrivacyEngine):
    """PrivacyEngine whose secure-mode randomness is a urandom-seeded torch.Generator.

    Setting ``secure_mode`` after construction (which would demand torchcsprng) makes Opacus
    draw Poisson batches and noise from ``secure_rng`` and use its robust noise sampler. It
    also builds the "fused" grad-sample module, which Opacus does not know by name.
    """

    def __init__(self, generator: torch.Generator) -> None:
        with warnings.catch_warnings():
            # The "secure RNG turned off" warning does not apply: secure_mode is set just below.
            warnings.simplefilter("ignore")
            super().__init__(accountant="rdp", secure_mode=False)
        self.secure_mode = True
        self.secure_rng = generator

    def _prepare_data_loader(self, data_loader: DataLoader, *, poisson_sampling: bool, **kwargs) -> DataLoader:
        # Without Poisson sampling the guarantee is only approximate anyway; the loader's own
        # order (whose sampler may have no generator to replace) is kept.
        if not poisson_sampling:
            return data_loader
        return super()._prepare_data_loader(data_loader, poisson_sampling=True, **kwargs)

    def _prepare_optimizer(self, *, optimizer, grad_sample_mode: str = "hooks", **kwargs):
        if grad_sample_mode != GRAD_SAMPLE_MODE:
            return super()._prepare_optimizer(optimizer=optimizer, grad_sample_mode=grad_sample_mode, **kwargs)
        if kwargs.pop("distributed", False) or kwargs.pop("clipping", "flat") != "flat":
            raise PrivacyError("The fused per-example gradient mode supports flat clipping on one machine only.")
        kwargs.pop("noise_generator", None)  # secure_rng is used, as Opacus does in secure mode
        return FusedDPOptimizer(
            optimizer=getattr(optimizer, "original_optimizer", optimizer),
            generator=self.secure_rng,
            secure_mode=self.secure_mode,
            **kwargs,
        )

    def _prepare_model(self, module: nn.Module, *, grad_sample_mode: str = "hooks", **kwargs):
        if grad_sample_mode != GRAD_SAMPLE_MODE:
            return super()._prepare_model(module, grad_sample_mode=grad_sample_mode, **kwargs)
        self.validate(module=module, optimizer=None, data_loader=None)
        if isinstance(module, AbstractGradSampleModule):
            if not isinstance(module, FusedGradSampleModule):
                raise PrivacyError("This model is already wrapped for another per-example gradient mode.")
            return module
        return FusedGradSampleModule(
            module,
            batch_first=kwargs.get("batch_first", True),
            loss_reduction=kwargs.get("loss_reduction", "mean"),
        )


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    poisson_sampling: bool = True,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    generator: torch.Generator | None = None,
) -> tuple[nn.Module, torch.optim.Optimizer, DataLoader]:
    """Wrap model, optimizer and data loader for DP-SGD with Opacus.

    The returned optimizer clips each example's gradient to ``max_grad_norm``, adds
    N(0, (noise_multiplier * max_grad_norm)^2) to the sum and divides by the expected batch
    size; the loader draws Poisson batches (sample rate 1 / len(data_loader)). The model must be
    in training mode and the loss a mean over the batch. With the default "fused" mode the
    returned model is a FusedGradSampleModule and the optimizer a FusedDPOptimizer (an Opacus
    DPOptimizer, usable with Opacus's BatchMemoryManager). Privacy accounting is the caller's
    job (core.privacy.ledger).
    """
    _check_noise(noise_multiplier, max_grad_norm)
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise PrivacyError(f"Unknown grad_sample_mode {grad_sample_mode!r}; choose one of {GRAD_SAMPLE_MODES}.")
    if generator is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        generator = secure_generator(device)
    engine = _UrandomPrivacyEngine(generator)
    try:
        return engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=poisson_sampling,
            grad_sample_mode=grad_sample_mode,
        )
    except UnsupportedModuleError as exc:
        raise PrivacyError(f"This model cannot be trained with DP-SGD: {_first_line(exc)}") from exc


def clipped_gradient_sum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_grad_norm: float,
    loss_fn=None,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    chunk_size: int = 32,
) -> dict[str, torch.Tensor]:
    """Sum over examples of each example's gradient clipped to L2 norm <= ``max_grad_norm``.

    The hospital's share of a Dopamine round (DESIGN §2), before noise. Keys are the model's
    trainable parameter names. ``loss_fn(logits, y)`` must return one loss per example
    (default: cross-entropy, reduction "none"). Examples are processed ``chunk_size`` at a time,
    which bounds memory and gives the same sum. The model's ``.grad`` fields are left as they were.
    """
    if not (isinstance(max_grad_norm, int | float) and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise PrivacyError(f"The clipping bound must be a positive number (got {max_grad_norm!r}).")
    if grad_sample_mode not in (GRAD_SAMPLE_MODE, "hooks", "ew"):
        raise PrivacyError(f"clipped_gradient_sum supports grad_sample_mode 'fused', 'hooks' or 'ew', not {grad_sample_mode!r}.")
    if len(x) != len(y):
        raise PrivacyError(f"{len(x)} images but {len(y)} labels.")
    if isinstance(model, AbstractGradSampleModule):
        model = model._module
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits, target, reduction="none"))
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name, p in params.items()}
    if len(x) == 0:
        return total
    _validate(model)
    saved_grads = {name: p.grad for name, p in params.items()}
    wrapped = _wrap(model, grad_sample_mode)
    try:
        for start in range(0, len(x), chunk_size):
            for p in params.values():
                p.grad_sample = None
            losses = loss_fn(wrapped(x[start : start + chunk_size]), y[start : start + chunk_size])
            if losses.dim() != 1:
                raise PrivacyError("loss_fn must return one loss per example (use reduction='none').")
            losses.sum().backward()
            clip_and_sum(list(params.values()), max_grad_norm, out=list(total.values()))
    finally:
        wrapped.cleanup()
        for name, p in params.items():
            p.grad = saved_grads[name]
    return total


def add_gaussian_noise(
    grads: dict[str, torch.Tensor], std: float, *, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """``grads`` plus independent N(0, std^2) noise on every coordinate (new tensors).

    For a Dopamine round with clipping bound C, noise multiplier sigma and secure-aggregation
    threshold m, std = sigma * C / sqrt(m) (DESIGN §2). ``generator`` defaults to a fresh
    urandom-seeded one; pass one only in tests.
    """
    if not (isinstance(std, int | float) and math.isfinite(std) and std >= 0):
        raise PrivacyError(f"The noise standard deviation must be a number >= 0 (got {std!r}).")
    generator = generator if generator is not None else secure_generator()
    noised = {}
    for name, value in grads.items():
        noise = torch.zeros_like(value)
        if std > 0:
            # Four draws summed and halved: the same N(0, std^2), without the low-order-bit
            # pattern of a single float Gaussian that can reveal the unnoised value.
            for _ in range(4):
                noise += torch.normal(0.0, std, size=value.shape, generator=generator, dtype=value.dtype)
            noise /= 2
        noised[name] = value + noise
    return noised


def poisson_sample(n: int, sample_rate: float, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices (int64, ascending) of a Poisson sample of ``range(n)``: each kept with probability ``sample_rate``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise PrivacyError(f"The number of examples must be a whole number >= 0 (got {n!r}).")
    if not (isinstance(sample_rate, int | float) and 0 <= sample_rate <= 1):
        raise PrivacyError(f"The sample rate must be between 0 and 1 (got {sample_rate!r}).")
    generator = generator if generator is not None else secure_generator()
    keep = torch.rand(n, generator=generator, dtype=torch.float64) < sample_rate
    return keep.nonzero().flatten().to(torch.int64)


def _validate(model: nn.Module) -> None:
    """Opacus's checks (no BatchNorm and the like), except that the model may be in eval mode:
    a single clipped-gradient computation does not need dropout."""
    problems = [
        error
        for error in ModuleValidator.validate(model, strict=False)
        if not (isinstance(error, IllegalModuleConfigurationError) and "training mode" in str(error))
    ]
    if problems:
        raise PrivacyError(f"This model cannot be trained with DP-SGD: {_first_line(problems[0])}")


def _wrap(model: nn.Module, grad_sample_mode: str) -> AbstractGradSampleModule:
    if grad_sample_mode == GRAD_SAMPLE_MODE:
        return FusedGradSampleModule(model, loss_reduction="sum")
    if grad_sample_mode == "hooks":
        return GradSampleModule(model, loss_reduction="sum")
    return get_gsm_class(grad_sample_mode)(model, loss_reduction="sum")


def _check_noise(noise_multiplier: float, max_grad_norm: float) -> None:
    if not (isinstance(noise_multiplier, int | float) and math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise PrivacyError(f"The noise multiplier must be a number >= 0 (got {noise_multiplier!r}).")
    if not (isinstance(max_grad_norm, int | float) and math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise PrivacyError(f"The clipping bound must be a positive number (got {max_grad_norm!r}).")


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return "; ".join(lines[:3]) if lines else type(exc).__name__
