"""DP-SGD building blocks: Opacus's PrivacyEngine for local training, and the per-hospital step
of a Dopamine (FSCDP) round.

Per-example gradients come from the "fused" grad-sample mode (core.privacy.per_sample) unless
another Opacus mode is asked for: it computes them in place of the batch gradient, and keeps
those of small-output convolutions implicit (ghost norms), which brought a DP step on a CPU
close to a plain one (benchmarks/dp_step.py), where Opacus's hooks cost 1.3-2.9x.

Randomness: every draw DP depends on (the Poisson batches, the Gaussian noise, in every
grad-sample mode) comes from one core.privacy.noise.DPRandom: AES-256-CTR keyed with 32 bytes
from os.urandom, turned into float64 Gaussians that are snapped before rounding to the gradient's
dtype. Opacus's secure mode (torchcsprng, which has no build for this torch) is not used, and
neither is any torch.Generator: a seeded Mersenne Twister keeps 32 bits of its seed, and a
coordinator could search them (issue #10).

Which models are accepted: check_per_example_safe (an allow-list of layers that keep examples
independent), for make_private in every mode and for clipped_gradient_sum.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader, dtype_safe, shape_safe, wrap_collate_with_empty
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.gsm_base import AbstractGradSampleModule
from opacus.grad_sample.utils import get_gsm_class
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from opacus.validators.errors import IllegalModuleConfigurationError, UnsupportedModuleError
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from torch.utils.data._utils.collate import default_collate

from core.errors import PrivacyError
from core.privacy.noise import DPRandom
from core.privacy.per_sample import (
    GRAD_SAMPLE_MODE,
    FusedDPOptimizer,
    FusedGradSampleModule,
    check_per_example_safe,
    clip_and_sum,
)

GRAD_SAMPLE_MODES = (GRAD_SAMPLE_MODE, "hooks", "ew", "functorch")
DEFAULT_GRAD_SAMPLE_MODE = GRAD_SAMPLE_MODE


class PoissonBatchSampler(UniformWithReplacementSampler):  # type: ignore[misc]  # Opacus ships no types
    """Opacus's Poisson batch sampler (each example in each batch with probability
    ``sample_rate``, ``steps`` batches per pass) drawing from a DPRandom instead of a torch generator."""

    def __init__(self, *, num_samples: int, sample_rate: float, rng: DPRandom, steps: int | None = None) -> None:
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, generator=None, steps=steps)
        self.rng = rng

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            yield self.rng.poisson_sample(self.num_samples, self.sample_rate).tolist()


class PoissonDataLoader(DPDataLoader):  # type: ignore[misc]  # Opacus ships no types
    """Opacus's DPDataLoader (empty batches collated to zero-length tensors of the right shapes)
    whose batches come from a PoissonBatchSampler."""

    def __init__(
        self,
        dataset: Dataset[Any],
        *,
        sample_rate: float,
        rng: DPRandom,
        steps: int | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        batch_first: bool = True,
        **kwargs: Any,
    ) -> None:
        self.sample_rate = sample_rate
        self.distributed = False
        kwargs.pop("drop_last", None)  # every Poisson batch is a step, however small
        kwargs.pop("generator", None)
        first = dataset[0]
        DataLoader.__init__(
            self,
            dataset=dataset,
            batch_sampler=PoissonBatchSampler(
                # A map-style dataset has a length; torch's Dataset type does not declare __len__.
                num_samples=len(dataset),  # type: ignore[arg-type]
                sample_rate=sample_rate,
                rng=rng,
                steps=steps,
            ),
            collate_fn=wrap_collate_with_empty(
                collate_fn=collate_fn or default_collate,
                batch_first=batch_first,
                sample_empty_shapes=[(0, *shape_safe(x)) for x in first],
                dtypes=[dtype_safe(x) for x in first],
            ),
            **kwargs,
        )

    @classmethod
    def from_loader(
        cls, data_loader: DataLoader[Any], *, rng: DPRandom, batch_first: bool = True
    ) -> PoissonDataLoader:
        """A Poisson loader over ``data_loader``'s dataset at rate 1 / len(data_loader), one pass
        being len(data_loader) batches, with its workers and collate function."""
        if isinstance(data_loader.dataset, IterableDataset):
            raise PrivacyError("DP-SGD needs a dataset with a known size to sample from, not a stream.")
        steps = len(data_loader)
        return cls(
            data_loader.dataset,
            sample_rate=1 / steps,
            rng=rng,
            steps=steps,
            collate_fn=data_loader.collate_fn,
            batch_first=batch_first,
            num_workers=data_loader.num_workers,
            pin_memory=data_loader.pin_memory,
            timeout=data_loader.timeout,
            worker_init_fn=data_loader.worker_init_fn,
            multiprocessing_context=data_loader.multiprocessing_context,
            prefetch_factor=data_loader.prefetch_factor,
            persistent_workers=data_loader.persistent_workers,
        )


class DPRandomOptimizer(DPOptimizer):  # type: ignore[misc]  # Opacus ships no types
    """Opacus's DPOptimizer (flat clipping, one machine) whose noise comes from a DPRandom:
    the optimizer of the "hooks", "ew" and "functorch" modes."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, *, rng: DPRandom | None = None, **kwargs: Any
    ) -> None:
        kwargs.pop("generator", None)
        kwargs.pop("secure_mode", None)
        super().__init__(optimizer, generator=None, secure_mode=False, **kwargs)
        self.rng = rng if rng is not None else DPRandom()

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noised = p.summed_grad.clone(memory_format=torch.contiguous_format)
            p.grad = self.rng.add_normal_(noised, std).view_as(p)
            _mark_as_processed(p.summed_grad)


class _DPRandomPrivacyEngine(PrivacyEngine):  # type: ignore[misc]  # Opacus ships no types
    """PrivacyEngine whose batches and noise come from one DPRandom, which checks models against
    the allow-list, and which builds the "fused" grad-sample module (Opacus does not know it)."""

    def __init__(self, rng: DPRandom) -> None:
        with warnings.catch_warnings():
            # "Secure RNG turned off" does not apply: no Opacus randomness is used at all.
            warnings.simplefilter("ignore")
            super().__init__(accountant="rdp", secure_mode=False)
        self.rng = rng

    def validate(
        self,
        *,
        module: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        data_loader: DataLoader[Any] | None,
    ) -> None:
        check_per_example_safe(module)
        super().validate(module=module, optimizer=optimizer, data_loader=data_loader)

    def _prepare_data_loader(
        self, data_loader: DataLoader[Any], *, poisson_sampling: bool, **kwargs: Any
    ) -> DataLoader[Any]:
        # Without Poisson sampling the guarantee is only approximate anyway; the loader's own
        # order is kept (its shuffling is not what the accountant analyses).
        if not poisson_sampling:
            return data_loader
        if kwargs.get("distributed", False):
            raise PrivacyError("DP-SGD here runs on one machine; distributed training is not supported.")
        return PoissonDataLoader.from_loader(data_loader, rng=self.rng, batch_first=kwargs.get("batch_first", True))

    def _prepare_optimizer(
        self, *, optimizer: torch.optim.Optimizer, grad_sample_mode: str = "hooks", **kwargs: Any
    ) -> DPOptimizer:
        if kwargs.pop("distributed", False) or kwargs.pop("clipping", "flat") != "flat":
            raise PrivacyError("DP-SGD here supports flat clipping on one machine only.")
        kwargs.pop("noise_generator", None)
        optimizer_class = FusedDPOptimizer if grad_sample_mode == GRAD_SAMPLE_MODE else DPRandomOptimizer
        return optimizer_class(optimizer=getattr(optimizer, "original_optimizer", optimizer), rng=self.rng, **kwargs)

    def _prepare_model(
        self, module: nn.Module, *, grad_sample_mode: str = "hooks", **kwargs: Any
    ) -> AbstractGradSampleModule:
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
    data_loader: DataLoader[Any],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    poisson_sampling: bool = True,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    rng: DPRandom | None = None,
) -> tuple[AbstractGradSampleModule, DPOptimizer, DataLoader[Any]]:
    """Wrap model, optimizer and data loader for DP-SGD with Opacus.

    The returned optimizer clips each example's gradient to ``max_grad_norm``, adds
    N(0, (noise_multiplier * max_grad_norm)^2) to the sum and divides by the expected batch
    size; the loader draws Poisson batches (sample rate 1 / len(data_loader), len(data_loader)
    batches a pass, empty ones included: take a step on those too, with noise_only_step).
    Batches and noise come from ``rng`` (default: a fresh DPRandom; pass one to share it with
    other draws of the same run, such as augmentation). The model must pass
    check_per_example_safe, be in training mode, and the loss be a mean over the batch. With the
    default "fused" mode the returned model is a FusedGradSampleModule and the optimizer a
    FusedDPOptimizer (an Opacus DPOptimizer, usable with Opacus's BatchMemoryManager). Privacy
    accounting is the caller's job (core.privacy.ledger).
    """
    _check_noise(noise_multiplier, max_grad_norm)
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise PrivacyError(f"Unknown grad_sample_mode {grad_sample_mode!r}; choose one of {GRAD_SAMPLE_MODES}.")
    if rng is not None and not isinstance(rng, DPRandom):
        raise PrivacyError("make_private draws its randomness from a DPRandom; this is a software error.")
    engine = _DPRandomPrivacyEngine(rng if rng is not None else DPRandom())
    try:
        private: tuple[AbstractGradSampleModule, DPOptimizer, DataLoader[Any]] = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=data_loader,
            noise_multiplier=float(noise_multiplier),
            max_grad_norm=float(max_grad_norm),
            poisson_sampling=poisson_sampling,
            grad_sample_mode=grad_sample_mode,
        )
        return private
    except UnsupportedModuleError as exc:
        raise PrivacyError(f"This model cannot be trained with DP-SGD: {_first_line(exc)}") from exc


def noise_only_step(optimizer: DPOptimizer) -> None:
    """The step of an empty Poisson batch: the clipped sum is zero, and the noise and the division
    by the expected batch size are those of any step.

    The accountant's analysis (the subsampled Gaussian) has every step release a noised sum;
    skipping one releases the model unchanged, an output the analysis does not cover.
    """
    if not isinstance(optimizer, DPOptimizer):
        raise PrivacyError("noise_only_step needs the optimizer returned by make_private; this is a software error.")
    for p in optimizer.params:
        p.grad_sample = p.new_zeros((0, *p.shape))
    optimizer.step()


DP_PHYSICAL_BATCH = 16
"""Examples per forward/backward pass in a DP-SGD step: clipped_gradient_sum (FSCDP) and the local training
loop (core.training.loop) take a larger Poisson batch in parts of this size, summing the parts' clipped
gradients and noising the sum once. Issue 14, 2 cores, median of 7: 16 is as fast as 32 or faster
(small_cnn 64 px, 60 images: 77 against 87-93 ms; squeezenet1_1 224 px, 48 images: 944 against 1048 ms;
128 px: 371 against 364 ms) and holds half the activations and per-example gradients (a step's peak: +87
against +140 MB for small_cnn at 64 px, +477 against +823 MB for squeezenet1_1 at 224 px)."""


def clipped_gradient_sum(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    max_grad_norm: float,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    chunk_size: int = DP_PHYSICAL_BATCH,
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
    _validate(model)
    loss_fn = loss_fn or (lambda logits, target: F.cross_entropy(logits, target, reduction="none"))
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    total = {name: torch.zeros_like(p, memory_format=torch.contiguous_format) for name, p in params.items()}
    if len(x) == 0:
        return total
    saved_grads = {name: p.grad for name, p in params.items()}
    wrapped = _wrap(model, grad_sample_mode)
    try:
        for start in range(0, len(x), chunk_size):
            for p in params.values():
                p.grad_sample = None  # type: ignore[attr-defined]  # Opacus's attribute, unknown to torch
            losses = loss_fn(wrapped(x[start : start + chunk_size]), y[start : start + chunk_size])
            if losses.dim() != 1:
                raise PrivacyError("loss_fn must return one loss per example (use reduction='none').")
            losses.sum().backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            clip_and_sum(list(params.values()), max_grad_norm, out=list(total.values()))
    finally:
        wrapped.cleanup()
        for name, p in params.items():
            p.grad = saved_grads[name]
    return total


def add_gaussian_noise(
    grads: dict[str, torch.Tensor], std: float, *, rng: DPRandom | None = None
) -> dict[str, torch.Tensor]:
    """``grads`` plus independent N(0, std^2) noise on every coordinate (new tensors; the inputs
    are left as they were).

    For a Dopamine round the plan fixes std (core.federation.local_work.noise_std). The noise
    is drawn from ``rng`` (default: a fresh DPRandom) in float64 and snapped before rounding
    to each tensor's dtype (core.privacy.noise).
    """
    if isinstance(std, bool) or not (isinstance(std, int | float) and math.isfinite(std) and std >= 0):
        raise PrivacyError(f"The noise standard deviation must be a number >= 0 (got {std!r}).")
    rng = rng if rng is not None else DPRandom()
    values = list(grads.values())
    if values and len({(v.dtype, v.device) for v in values}) == 1:
        # One draw for all tensors (many small ones cost more than the noise itself).
        flat = torch.cat([v.detach().reshape(-1) for v in values])
        rng.add_normal_(flat, std)
        chunks = torch.split(flat, [v.numel() for v in values])
        return {name: chunk.view(value.shape) for (name, value), chunk in zip(grads.items(), chunks, strict=True)}
    return {
        name: rng.add_normal_(value.detach().clone(memory_format=torch.contiguous_format), std)
        for name, value in grads.items()
    }


def poisson_sample(n: int, rate: float, *, rng: DPRandom | None = None) -> torch.Tensor:
    """Indices (int64, ascending) of a Poisson sample of ``range(n)``: each kept with probability ``rate``."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise PrivacyError(f"The number of examples must be a whole number >= 0 (got {n!r}).")
    if isinstance(rate, bool) or not (isinstance(rate, int | float) and 0 <= rate <= 1):
        raise PrivacyError(f"The sample rate must be between 0 and 1 (got {rate!r}).")
    return (rng if rng is not None else DPRandom()).poisson_sample(n, float(rate))


def _validate(model: nn.Module) -> None:
    """The allow-list, then Opacus's own checks except that the model may be in eval mode: a
    single clipped-gradient computation does not need dropout."""
    check_per_example_safe(model)
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
