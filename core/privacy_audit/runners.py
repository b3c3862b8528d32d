"""One audited training run through the product's own code, with canaries, on synthetic data.

- Local CDP: core.training.loop.train_local with DPSettings (make_private: Poisson sampling,
  per-example clipping, noise, all from a fresh DPRandom), accounted by core.training.config.plan_run,
  the function the trainer charges the ledger with.
- FSCDP: every hospital runs core.federation.local_work.fscdp_step on the global model each round and
  the released sum comes out of core.secagg.run_round (the real client and server state machines,
  messages through their wire bytes, in memory). The canaries sit in hospital 1, which is honest; the
  auditor plays the coordinator and the last t hospitals (the colluders the plan allows, t >= 1): it
  sees every released sum and subtracts its own hospitals' vectors, noise included. It is compared
  with the plan's epsilon (FederationPlan.epsilon_cost), the figure that holds against exactly that
  coalition.

Scores (higher: more likely included). Gradient canary j: the sum over steps of the release's
component along the canary's direction -C e_j, in units of C. Locally SGD without momentum at a
constant rate makes that (w_T - w_0)_j times a constant; in a federation the coordinator reads it off
each released sum. Input canary: minus its loss under the final model (black box). Any score gives a
valid bound; these are the strongest known for each kind.

Nothing here opens a hospital home, a ledger, an image folder or a socket: images are drawn in
memory, and every result stays in the returned object.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.data.preprocess import Preprocessing, normalize
from core.errors import PrivacyError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress
from core.privacy_audit.canaries import (
    CanaryHarness,
    filler_images,
    gradient_canary_images,
    input_canaries,
)


@dataclass
class CanaryRun:
    """What one audited run produced: canary scores and the truth, and the accountant's claim."""

    gradient_scores: np.ndarray
    gradient_included: np.ndarray
    input_scores: np.ndarray
    input_included: np.ndarray
    epsilon: float  # the accountant's, for the claimed sigma, at the audit's delta
    sample_rate: float  # q of the run (local: 1 / batches per epoch)
    steps: int  # steps (local) or rounds (FSCDP) run and accounted
    noise_multiplier_run: float  # what the mechanism used (differs only in power checks)
    threat_model: str
    images_per_hospital: list[int] = field(default_factory=list)


def synthetic_images(count: int, size: int, *, hospital: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` SYNTHETIC fundus images of one simulated hospital (uint8 [n, 3, size, size], grades)."""
    from PIL import Image

    from core.data.synthetic import APTOS_LABEL_MIX, generate_fundus, hospital_style

    style = hospital_style(hospital, int(rng.integers(0, 2**31)))
    grades = rng.choice(len(APTOS_LABEL_MIX), size=count, p=np.array(APTOS_LABEL_MIX) / sum(APTOS_LABEL_MIX))
    images = np.empty((count, 3, size, size), dtype=np.uint8)
    for i, grade in enumerate(grades):
        image = generate_fundus(int(grade), size=max(32, size), rng=rng, style=style)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        images[i] = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)
    return torch.from_numpy(images), torch.from_numpy(grades.astype(np.int64))


def _coins(count: int, rng: np.random.Generator) -> np.ndarray:
    """Each canary in with probability 1/2, independently."""
    return rng.random(count) < 0.5


def _input_scores(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, spec: Preprocessing) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        losses = nn.functional.cross_entropy(model(normalize(images, spec)), labels, reduction="none")
    return (-losses).double().numpy()


@dataclass
class _Data:
    harness: CanaryHarness
    spec: Preprocessing
    gradient_included: np.ndarray
    input_images: torch.Tensor
    input_labels: torch.Tensor
    input_included: np.ndarray
    canary_images: torch.Tensor  # every canary slot: the canary if included, else a filler
    canary_labels: torch.Tensor


def _prepare(config, rng: np.random.Generator) -> _Data:
    from core.models.registry import build_model

    spec = Preprocessing(size=config.image_size)
    model = build_model(config.model, config.num_classes)
    harness = CanaryHarness(model, canaries=config.gradient_canaries, num_classes=config.num_classes, spec=spec,
                            max_grad_norm=config.max_grad_norm)
    size = config.image_size
    gradient_in = _coins(config.gradient_canaries, rng)
    gradient_slots = torch.where(torch.from_numpy(gradient_in)[:, None, None, None],
                                 gradient_canary_images(config.gradient_canaries, size),
                                 filler_images(config.gradient_canaries, size))
    # A gradient canary's (and a filler's) label is class 0: its loss is log K whatever the model.
    gradient_labels = torch.zeros(config.gradient_canaries, dtype=torch.int64)
    input_images, input_labels = input_canaries(config.input_canaries, size, config.num_classes, rng)
    input_in = _coins(config.input_canaries, rng)
    mask = torch.from_numpy(input_in)
    input_slots = torch.where(mask[:, None, None, None], input_images, filler_images(config.input_canaries, size))
    input_slot_labels = torch.where(mask, input_labels, torch.zeros_like(input_labels))
    return _Data(harness, spec, gradient_in, input_images, input_labels, input_in,
                 torch.cat([gradient_slots, input_slots]), torch.cat([gradient_labels, input_slot_labels]))


def run_local(config, *, progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED) -> CanaryRun:
    """The audited local CDP run of ``config`` (core.privacy_audit.AuditConfig)."""
    from core.training.config import TrainConfig, plan_run
    from core.training.loop import DPSettings, train_local

    rng = np.random.default_rng(config.seed)
    progress(0.0, "Drawing synthetic images and canaries")
    data = _prepare(config, rng)
    real_images, real_labels = synthetic_images(config.real_images, config.image_size, hospital=0, rng=rng)
    images = torch.cat([real_images, data.canary_images])
    labels = torch.cat([real_labels, data.canary_labels])
    cancel.check()
    # Poisson sampling at q = 1 / batches per epoch (train_local's rule): the batches per epoch
    # closest to 1 / planned q, and as many epochs as come closest to the planned steps. Fillers keep
    # len(images), hence q, independent of which canaries are in.
    batch_size = math.ceil(len(images) / max(1, round(1.0 / config.sample_rate)))
    claimed = TrainConfig(data=Path("."), out=Path("."), mode="cdp", model=config.model, epochs=1,
                          batch_size=batch_size, noise_multiplier=config.noise_multiplier,
                          max_grad_norm=config.max_grad_norm, accountant=config.accountant)
    per_epoch = plan_run(claimed, len(images), config.delta).steps_per_epoch
    claimed.epochs = max(1, round(config.steps / per_epoch))
    run_plan = plan_run(claimed, len(images), config.delta)
    start = data.harness.canary.weight.detach().clone()
    sigma_run = config.noise_multiplier * config.broken_noise_factor

    def on_step(step: int, loss: float) -> None:
        progress(0.05 + 0.9 * step / run_plan.steps, f"Training with canaries: step {step} of {run_plan.steps}")

    stats = train_local(
        data.harness, images, labels, data.spec, epochs=claimed.epochs, batch_size=batch_size, lr=config.lr,
        momentum=0.0, lr_schedule="constant", optimizer="sgd",
        dp=DPSettings(noise_multiplier=sigma_run, max_grad_norm=config.max_grad_norm),
        on_step=on_step, cancel=cancel,
    )
    if stats.steps != run_plan.steps or not math.isclose(stats.sample_rate, run_plan.sample_rate):
        # The accountant would describe another run than the one the code ran: that is a finding.
        raise PrivacyError(f"Training ran {stats.steps} steps at q = {stats.sample_rate:g} but the accountant "
                           f"counts {run_plan.steps} at q = {run_plan.sample_rate:g}: a bug; please report it.")
    # In units of C: SGD divided each noised sum by Opacus's expected batch size, int(N q).
    scale = int(len(images) * run_plan.sample_rate) / (config.lr * config.max_grad_norm)
    assert run_plan.epsilon is not None  # plan_run states one for every CDP run
    gradient_scores = (data.harness.canary.weight.detach()[0] - start[0]).double().numpy() * scale
    return CanaryRun(
        gradient_scores=gradient_scores, gradient_included=data.gradient_included,
        input_scores=_input_scores(data.harness.model, data.input_images, data.input_labels, data.spec),
        input_included=data.input_included, epsilon=float(run_plan.epsilon), sample_rate=run_plan.sample_rate,
        steps=run_plan.steps, noise_multiplier_run=sigma_run,
        threat_model="Local DP-SGD: epsilon holds against anyone who obtains the model, or every intermediate one.",
        images_per_hospital=[len(images)],
    )


def run_fscdp(config, *, progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED) -> CanaryRun:
    """The audited FSCDP federation of ``config``: K hospitals in one process, real round code."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.federation.local_work import fscdp_step
    from core.federation.plan import FederationPlan, threat_model_text
    from core.federation.weights import ParameterLayout
    from core.secagg import RoundParams, derive_encoding, run_round

    rng = np.random.default_rng(config.seed)
    progress(0.0, "Drawing synthetic images and canaries")
    data = _prepare(config, rng)
    hospitals = []
    for k in range(config.hospitals):
        images, labels = synthetic_images(config.real_images, config.image_size, hospital=k, rng=rng)
        if k == 0:  # the honest hospital whose patients the canaries stand for
            images, labels = torch.cat([images, data.canary_images]), torch.cat([labels, data.canary_labels])
        hospitals.append((images, labels))
    cancel.check()

    def plan_with(sigma: float) -> FederationPlan:
        return FederationPlan(
            name="privacy audit", federation_id="privacy-audit", mode="fscdp", rounds=config.steps,
            hospitals=config.hospitals, threshold=config.threshold, colluders=config.colluders,
            model=config.model, image_size=config.image_size, lr=config.lr, momentum=0.0,
            noise_multiplier=sigma, max_grad_norm=config.max_grad_norm, sample_rate=config.sample_rate,
            secagg=True, delta=config.delta, accountant=config.accountant,
            hospital_names=[f"audit hospital {k + 1}" for k in range(config.hospitals)],
        )

    claimed = plan_with(config.noise_multiplier)
    if config.noise_multiplier > 0:
        claimed.validate()
    else:  # sigma = 0 (a power check) is no valid plan; everything else must be
        plan_with(1.0).validate()
    sigma_run = config.noise_multiplier * config.broken_noise_factor
    mechanism = plan_with(sigma_run)
    harness = data.harness
    layout = ParameterLayout(harness)
    canary_slice = _parameter_slice(layout, "canary.weight")
    encoding = derive_encoding(max_grad_norm=float(config.max_grad_norm),
                               max_batch_size=max(len(images) for images, _ in hospitals),
                               noise_std=mechanism.noise_std_per_hospital(), num_hospitals=config.hospitals)
    keys = [Ed25519PrivateKey.generate() for _ in hospitals]
    coalition = range(config.hospitals - config.colluders, config.hospitals)  # never hospital 1 (t < m <= K)
    total_images = sum(len(images) for images, _ in hospitals)
    seen = np.zeros(config.gradient_canaries)
    for round_index in range(config.steps):
        cancel.check()
        vectors = [fscdp_step(harness, layout, images, labels, data.spec, mechanism).vector
                   for images, labels in hospitals]
        params = RoundParams(f"privacy-audit:r{round_index + 1}:a1", config.threshold, layout.length, encoding,
                             colluders=config.colluders)
        released = run_round(params, vectors, identity_keys=keys).values
        # The coalition knows its own hospitals' vectors exactly, noise included.
        seen += (released - sum(vectors[k] for k in coalition))[canary_slice]
        # The coordinator's step (post-processing): SGD on the averaged noisy gradient.
        weights = layout.flatten(dict(harness.named_parameters()))
        weights -= config.lr * released / (config.sample_rate * total_images)
        with torch.no_grad():
            for name, tensor in layout.unflatten(weights).items():
                harness.get_parameter(name).copy_(tensor)
        progress(0.05 + 0.9 * (round_index + 1) / config.steps,
                 f"Federated rounds with canaries: {round_index + 1} of {config.steps}")
    epsilon = claimed.epsilon_cost(len(hospitals[0][0])) if config.noise_multiplier > 0 else math.inf
    return CanaryRun(
        gradient_scores=-seen / config.max_grad_norm, gradient_included=data.gradient_included,
        input_scores=_input_scores(harness.model, data.input_images, data.input_labels, data.spec),
        input_included=data.input_included, epsilon=float(epsilon), sample_rate=float(config.sample_rate),
        steps=config.steps, noise_multiplier_run=sigma_run,
        threat_model=f"{threat_model_text(claimed)} The auditor played the coordinator and {config.colluders} "
                     f"hospital(s); the canaries sat in another, honest one.",
        images_per_hospital=[len(images) for images, _ in hospitals],
    )


def _parameter_slice(layout, name: str) -> slice:
    offset = 0
    for entry, size in zip(layout.names, layout.sizes, strict=True):
        if entry == name:
            return slice(offset, offset + size)
        offset += size
    raise KeyError(name)

