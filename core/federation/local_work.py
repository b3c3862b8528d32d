"""What a hospital computes in a round, per mode (DESIGN §2). No network, no ledger: the client
charges the ledger between computing and sending.

- FSCDP: one DP-SGD step of the union dataset. Poisson-sample the hospital's images at rate q,
  sum the per-example gradients each clipped to C, add Gaussian noise of std sigma*C/sqrt(m - t).
  At least m such sums are inside any released total and a coalition knows at most t of their
  noises, so the noise it does not know is at least N(0, sigma^2 C^2).
- FPDP: local DP-SGD (train_local with DPSettings) for E epochs; the result is the model delta.
- F: local SGD for E epochs; the model delta.

Sampling, flips and noise come from a core.privacy.noise.DPRandom (AES-256-CTR keyed from
os.urandom), never from a seeded torch or numpy generator (issue #10: those keep 32 bits). They are drawn
on the CPU whatever ``device`` the model computes on (core.device): only the normalised batch, the labels
and the model move there, and FSCDP's clipped sum comes back to the CPU before its noise is added.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from core.data.preprocess import Preprocessing, normalize
from core.data.store import ImageStore
from core.federation.plan import FederationPlan
from core.federation.weights import ParameterLayout
from core.jobs import NEVER_CANCELLED, CancelToken
from core.privacy.noise import DPRandom


@dataclass
class LocalResult:
    vector: np.ndarray  # float64, the layout's length: noised gradient sum (FSCDP) or model delta
    loss: float  # mean training loss seen locally (never sent)
    batch_size: int  # FSCDP: this round's Poisson sample size (never sent)
    steps: int  # optimizer steps taken locally (FPDP: what the ledger was charged)
    sample_rate: float


def fscdp_step(
    model: nn.Module,
    layout: ParameterLayout,
    images: torch.Tensor | ImageStore,
    labels: torch.Tensor,
    spec: Preprocessing,
    plan: FederationPlan,
    *,
    rng: DPRandom | None = None,
    device: torch.device | str = "cpu",
) -> LocalResult:
    """The hospital's noised clipped-gradient sum for one FSCDP round; sampling, flips and noise
    all from ``rng`` (default: a fresh DPRandom; pass one only in tests), on the CPU. ``model`` must
    already be on ``device``, where the gradients are computed."""
    from core.privacy.dpsgd import add_gaussian_noise, clipped_gradient_sum, poisson_sample

    rng = rng if rng is not None else DPRandom()
    assert plan.sample_rate is not None and plan.max_grad_norm is not None  # validate(): FSCDP sets both
    indices = poisson_sample(images.shape[0], float(plan.sample_rate), rng=rng)
    loss = float("nan")
    if len(indices) > 0:
        batch = images[indices]
        flip = torch.from_numpy(rng.bernoulli(batch.shape[0], 0.5))  # fundus: left/right eyes mirror
        if bool(flip.any()):
            batch = batch.clone()
            batch[flip] = batch[flip].flip(-1)
        x = normalize(batch, spec).to(device)
        y = labels[indices].to(device)
        model.train()
        grads = clipped_gradient_sum(model, x, y, max_grad_norm=float(plan.max_grad_norm))
        grads = {name: grad.cpu() for name, grad in grads.items()}  # noised on the CPU (no-op there)
        with torch.no_grad():
            model.eval()
            loss = float(nn.functional.cross_entropy(model(x), y))
    else:
        # Nobody sampled: the sum is zero, but the noise must still be added (and charged).
        grads = {name: torch.zeros(shape) for name, shape in layout.shapes.items()}
    noised = add_gaussian_noise(grads, plan.noise_std_per_hospital(), rng=rng)
    return LocalResult(vector=layout.flatten(noised), loss=loss, batch_size=int(len(indices)), steps=1,
                       sample_rate=float(plan.sample_rate))


def train_delta(
    model: nn.Module,
    layout: ParameterLayout,
    images: torch.Tensor | ImageStore,
    labels: torch.Tensor,
    spec: Preprocessing,
    plan: FederationPlan,
    *,
    on_step: Callable[[int, float], None] | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
    device: torch.device | str = "cpu",
) -> LocalResult:
    """F / FPDP: train a copy of the global model locally (on ``device``) and return (trained - global).

    FPDP draws its batches, flips and noise from a fresh DPRandom (train_local's default), on the CPU."""
    from core.training.loop import DPSettings, train_local

    before = layout.flatten(dict(model.named_parameters()))
    dp = None
    if plan.mode == "fpdp":
        assert plan.noise_multiplier is not None and plan.max_grad_norm is not None  # validate(): FPDP sets both
        dp = DPSettings(noise_multiplier=float(plan.noise_multiplier), max_grad_norm=float(plan.max_grad_norm))
    assert plan.local_epochs is not None and plan.batch_size is not None  # validate(): F and FPDP set both
    stats = train_local(
        model, images, labels, spec, epochs=int(plan.local_epochs), batch_size=int(plan.batch_size), lr=plan.lr,
        momentum=plan.momentum, dp=dp, on_step=on_step, cancel=cancel, device=device,
    )
    after = layout.flatten(dict(model.named_parameters()))
    return LocalResult(vector=after - before, loss=stats.mean_loss, batch_size=int(plan.batch_size),
                       steps=stats.steps, sample_rate=stats.sample_rate)


def clip_l2(vector: np.ndarray, bound: float) -> np.ndarray:
    """Scale ``vector`` down to L2 norm ``bound`` if it is longer (secure aggregation's range)."""
    norm = float(np.linalg.norm(vector))
    return vector * (bound / norm) if norm > bound else vector
