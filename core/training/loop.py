"""The training loop shared by local training (modes C, CDP) and federated local work (F, FPDP).

Images arrive preprocessed as uint8: a tensor, or an ImageStore (core.data.cache.load_images) that a
large collection is read from a batch at a time. They are normalised per batch with the same function
inference uses, so epochs after the first are bound by compute.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core.data.preprocess import Preprocessing, normalize
from core.data.store import ImageStore
from core.jobs import NEVER_CANCELLED, CancelToken
from core.privacy.noise import DPRandom
from core.training.metrics import compute_metrics

if TYPE_CHECKING:
    from opacus.grad_sample.gsm_base import AbstractGradSampleModule

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class DPSettings:
    """DP-SGD with Poisson sampling at rate q = batch_size / N, per-example clipping and noise sigma*C."""

    noise_multiplier: float
    max_grad_norm: float


@dataclass
class LocalTrainStats:
    steps: int
    sample_rate: float
    mean_loss: float
    losses: list[float] = field(default_factory=list)


def _learning_rate(base_lr: float, schedule: str, step: int, total_steps: int) -> float:
    if schedule == "cosine":
        return 0.5 * base_lr * (1.0 + math.cos(math.pi * step / max(1, total_steps)))
    return base_lr


def _augment(images: torch.Tensor, flips: torch.Generator | DPRandom) -> torch.Tensor:
    """Random horizontal flips: fundus photographs of left and right eyes are mirror images.

    With DP the flips come from the run's DPRandom: they are drawn per sampled example, and a
    seeded generator's stream would be searchable like the noise's.
    """
    if isinstance(flips, DPRandom):
        flip = torch.from_numpy(flips.bernoulli(images.shape[0], 0.5))
    else:
        flip = torch.rand(images.shape[0], generator=flips) < 0.5
    if flip.any():
        images = images.clone()
        images[flip] = images[flip].flip(-1)
    return images


def _dp_step_in_parts(forward, optim, criterion, images: torch.Tensor, labels: torch.Tensor, spec: Preprocessing,
                      device: torch.device | str, part: int) -> float:
    """One DP-SGD step over ``images`` taken ``part`` at a time (core.privacy.dpsgd.DP_PHYSICAL_BATCH: the
    activations and per-example gradients of one part are alive at a time). The parts' clipped gradients
    are summed and noised once, as one step (Opacus's skipped steps): the release and its accounting are
    those of the whole batch. Returns the batch's mean loss."""
    total, count = 0.0, images.shape[0]
    for start in range(0, count, part):
        last = start + part >= count
        optim.signal_skip_step(do_skip=not last)  # clip and add up this part; noise and step after the last
        x = normalize(images[start:start + part], spec).to(device)
        y = labels[start:start + part].to(device)
        loss = criterion(forward(x), y)
        loss.backward()
        optim.step()
        total += float(loss.detach()) * x.shape[0]
        if not last:
            optim.zero_grad(set_to_none=True)  # drops this part's per-example gradients, keeps the running sum
    return total / count


def train_local(
    model: nn.Module,
    images: torch.Tensor | ImageStore,
    labels: torch.Tensor,
    spec: Preprocessing,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    momentum: float = 0.9,
    lr_schedule: str = "constant",
    optimizer: str = "sgd",
    dp: DPSettings | None = None,
    seed: int | None = None,
    rng: DPRandom | None = None,
    on_step: Callable[[int, float], None] | None = None,
    before_epoch: Callable[[int], None] | None = None,
    after_epoch: Callable[[int, float], None] | None = None,
    cancel: CancelToken = NEVER_CANCELLED,
    device: torch.device | str = "cpu",
) -> LocalTrainStats:
    """Train ``model`` in place for ``epochs`` epochs; with ``dp``, DP-SGD through Opacus.

    With ``dp``, Poisson batches, flips and noise all come from ``rng`` (default: a fresh
    DPRandom) and ``seed`` plays no part; an empty Poisson batch still takes its (noise-only)
    step. Without ``dp``, ``seed`` (default: random) fixes the shuffling and the flips.
    ``before_epoch(epoch)`` runs before an epoch's first step (the place to charge a privacy ledger),
    ``after_epoch(epoch, mean_loss)`` after its last (the place to evaluate; the model is put back in
    training mode afterwards), ``on_step(step, loss)`` after every optimizer step. ``cancel`` is checked
    every batch. Epochs count from 1.
    """
    if images.shape[0] == 0:
        raise ValueError("train_local needs at least one image")
    if lr_schedule not in ("constant", "cosine"):
        raise ValueError(f"unknown learning-rate schedule {lr_schedule!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}")
    flips: torch.Generator | DPRandom
    if dp is not None:
        flips = rng if rng is not None else DPRandom()
    else:
        # Mode C: reproducible with a seed; nothing here is a privacy mechanism.
        flips = torch.Generator().manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
    model.to(device).train()
    optim: torch.optim.Optimizer
    if optimizer == "adam":
        # Adam on DP-SGD's noised gradients is post-processing: the privacy cost is the same.
        optim = torch.optim.Adam(model.parameters(), lr=lr, betas=(momentum, 0.999))
    else:
        optim = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    # With dp this loader only fixes the dataset and the batches per pass: make_private replaces
    # its sampling with Poisson sampling from the DPRandom.
    dataset = images.dataset(labels) if isinstance(images, ImageStore) else TensorDataset(images, labels)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=dp is None,
        generator=flips if dp is None else None,
    )
    per_epoch = len(loader)
    total_steps = per_epoch * epochs
    sample_rate = 1.0 / per_epoch
    wrapped: AbstractGradSampleModule | None = None
    if dp is not None:
        from core.privacy import dpsgd
        from core.privacy.dpsgd import make_private, noise_only_step

        assert isinstance(flips, DPRandom)  # with dp, flips is the run's DPRandom

        wrapped, optim, loader = make_private(
            model, optim, loader,
            noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm, poisson_sampling=True,
            rng=flips,
        )
    forward = wrapped if wrapped is not None else model
    criterion = nn.CrossEntropyLoss()
    losses: list[float] = []
    step = 0
    try:
        for epoch in range(1, epochs + 1):
            if before_epoch is not None:
                before_epoch(epoch)
            epoch_losses_start = len(losses)
            for batch_images, batch_labels in loader:
                cancel.check()
                for group in optim.param_groups:
                    group["lr"] = _learning_rate(lr, lr_schedule, step, total_steps)
                step += 1
                optim.zero_grad(set_to_none=True)
                if batch_images.shape[0] == 0:
                    # Poisson sampling drew nobody (probability (1-q)^N): the step still happens, with
                    # the noise alone, as the accountant's analysis assumes.
                    noise_only_step(optim)
                    if on_step is not None:
                        on_step(step, float("nan"))
                    continue
                batch_images = _augment(batch_images, flips)  # one draw per logical batch, split or not
                if dp is not None and batch_images.shape[0] > dpsgd.DP_PHYSICAL_BATCH:
                    losses.append(_dp_step_in_parts(forward, optim, criterion, batch_images, batch_labels, spec,
                                                    device, dpsgd.DP_PHYSICAL_BATCH))
                else:
                    x = normalize(batch_images, spec).to(device)
                    y = batch_labels.to(device)
                    loss = criterion(forward(x), y)
                    loss.backward()
                    optim.step()
                    losses.append(float(loss.detach()))
                if on_step is not None:
                    on_step(step, losses[-1])
            if after_epoch is not None:
                epoch_losses = losses[epoch_losses_start:]
                after_epoch(epoch, sum(epoch_losses) / len(epoch_losses) if epoch_losses else float("nan"))
                model.train()
    finally:
        if wrapped is not None:
            wrapped._close()  # remove Opacus hooks; `model` keeps the trained weights
        model.eval()
    mean_loss = float(sum(losses) / len(losses)) if losses else float("nan")
    return LocalTrainStats(steps=step, sample_rate=sample_rate, mean_loss=mean_loss, losses=losses)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    images: torch.Tensor | ImageStore,
    spec: Preprocessing,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    model.to(device).eval()
    outputs = [
        model(normalize(images[i : i + batch_size], spec).to(device)).float().cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def evaluate_model(
    model: nn.Module,
    images: torch.Tensor | ImageStore,
    labels: torch.Tensor,
    spec: Preprocessing,
    *,
    num_classes: int,
    device: torch.device | str = "cpu",
) -> dict:
    logits = predict_logits(model, images, spec, device=device)
    loss = float(nn.functional.cross_entropy(logits, labels)) if len(labels) else float("nan")
    metrics = compute_metrics(labels.tolist(), logits.argmax(dim=1).tolist(), num_classes)
    metrics["loss"] = loss
    return metrics
