"""One training run of one mode, through the product's own code.

C and CDP: core.training.loop.train_local on the union of the hospitals' images (CDP with DP-SGD).
F and FPDP: FedAvg rounds in which a fraction of the hospitals, in turn, train E local epochs with
core.federation.local_work.train_delta (FPDP: DP-SGD), their updates serialised and averaged by
core.federation.aggregation.PlainAggregation, the coordinator's optimizer stepping on the average.
FSCDP: every round each hospital computes core.federation.local_work.fscdp_step (its share of the
noise, sigma*C/sqrt(m - t)), the sum is taken by the real secure aggregation (core.secagg.run_round with
the parameters core.federation.roster.secagg_params derives), and the coordinator steps as in a real
federation. Only the transport differs: one process, no HTTPS.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from core.compare.config import FEDERATED, MODES, PRIVATE
from core.data.preprocess import Preprocessing
from core.data.store import ImageStore
from core.errors import ConfigError
from core.jobs import NEVER_CANCELLED, CancelToken


@dataclass
class CompareData:
    """Preprocessed images (uint8) and labels, the hospitals' and the test set's indices."""

    images: torch.Tensor | ImageStore  # a large collection stays on disk (core.data.store)
    labels: torch.Tensor
    hospitals: list[torch.Tensor]  # int64 indices into images, one tensor per hospital
    test: torch.Tensor
    spec: Preprocessing
    classes: list[str]

    def part(self, indices: torch.Tensor) -> tuple[torch.Tensor | ImageStore, torch.Tensor]:
        if isinstance(self.images, ImageStore):
            return self.images.subset(indices), self.labels[indices]
        return self.images[indices], self.labels[indices]

    @property
    def union(self) -> torch.Tensor:
        return torch.cat(self.hospitals)


@dataclass
class ModeSettings:
    mode: str
    lr: float
    model: str = "small_cnn"
    epochs: int = 10  # C, CDP
    batch_size: int = 32  # C, CDP; F, FPDP local
    optimizer: str = "sgd"  # C, CDP
    momentum: float = 0.9
    rounds: int = 20  # F, FPDP, FSCDP
    local_epochs: int = 5  # F, FPDP
    fraction: float = 0.5  # F, FPDP: the share of hospitals that train each round, in turn
    sample_rate: float = 0.3  # FSCDP
    noise_multiplier: float | None = 1.0  # DP modes
    max_grad_norm: float = 1.0
    delta: float = 1e-4
    accountant: str = "rdp"
    threshold: int | None = None  # FSCDP m (default: the plan's rule for K hospitals and t)
    colluders: int | None = None  # FSCDP t (default: 1)
    server_lr_schedule: str = "cosine"  # FSCDP's coordinator optimizer


@dataclass
class RunOutcome:
    mode: str
    seed: int
    accuracy: float
    kappa: float
    loss: float  # test cross-entropy (the learning-rate search breaks accuracy ties with it)
    per_class_recall: list
    epsilon: float  # at ``delta`` with ``accountant``; inf without DP
    delta: float | None
    accountant: str | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int  # DP-SGD steps the epsilon counts (per hospital, the most any one took)
    rounds: int | None
    seconds: float
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["epsilon"] = None if math.isinf(self.epsilon) else self.epsilon  # JSON has no infinity
        data["loss"] = self.loss if math.isfinite(self.loss) else None  # a diverged run
        return data


RngFactory = Callable[[str, int], object]  # (hospital, round) -> a DPRandom, or None for a fresh one


def _fresh(_hospital: str, _round: int):
    return None


@dataclass
class Trained:
    model: torch.nn.Module
    epsilon: float  # inf without DP
    sample_rate: float | None  # of the accounted hospital (the worst), or the union's for CDP
    steps: int


def train_mode(settings: ModeSettings, data: CompareData, seed: int, *, cancel: CancelToken = NEVER_CANCELLED,
               progress: Callable[[float], None] = lambda fraction: None,
               rng_factory: RngFactory = _fresh, device: torch.device | str = "cpu") -> Trained:
    """Train ``settings.mode`` on ``data``'s hospitals from the initial weights of ``seed``, the model on
    ``device`` (its DP randomness stays on the CPU: core.device). ``rng_factory`` is for the test suite
    only (the same DP randomness in two runs); the CLI and the app never set it."""
    from core.models.registry import build_model

    if settings.mode not in MODES:
        raise ConfigError(f"Unknown mode {settings.mode!r}; choose among {', '.join(MODES)}.")
    torch.manual_seed(seed)  # the initial weights: public, as a federation plan's seed makes them
    model = build_model(settings.model, len(data.classes)).to(device)
    if settings.mode in FEDERATED:
        epsilon, rate, steps = _federated(settings, data, model, cancel, progress, rng_factory, device)
    else:
        epsilon, rate, steps = _central(settings, data, model, seed, cancel, progress, rng_factory, device)
    return Trained(model, epsilon, rate if settings.mode in PRIVATE else None, steps)


def run_mode(settings: ModeSettings, data: CompareData, seed: int, *, cancel: CancelToken = NEVER_CANCELLED,
             progress: Callable[[float], None] = lambda fraction: None,
             device: torch.device | str = "cpu") -> RunOutcome:
    """Train ``settings.mode`` (on ``device``) and evaluate it on ``data``'s test set."""
    from core.training.loop import evaluate_model

    started = time.monotonic()
    trained = train_mode(settings, data, seed, cancel=cancel, progress=progress, device=device)
    images, labels = data.part(data.test)
    metrics = evaluate_model(trained.model, images, labels, data.spec, num_classes=len(data.classes),
                             device=device)
    private = settings.mode in PRIVATE
    return RunOutcome(
        mode=settings.mode, seed=seed, accuracy=metrics["accuracy"], kappa=metrics["kappa"],
        loss=metrics["loss"], per_class_recall=metrics["per_class_recall"], epsilon=trained.epsilon,
        delta=settings.delta if private else None, accountant=settings.accountant if private else None,
        noise_multiplier=settings.noise_multiplier if private else None, sample_rate=trained.sample_rate,
        steps=trained.steps, rounds=settings.rounds if settings.mode in FEDERATED else None,
        seconds=round(time.monotonic() - started, 3), settings=asdict(settings))


def _central(settings, data, model, seed, cancel, progress, rng_factory, device) -> tuple[float, float, int]:
    from core.privacy.accountant import compute_epsilon, steps_per_epoch
    from core.training.loop import DPSettings, train_local

    images, labels = data.part(data.union)
    per_epoch = steps_per_epoch(len(images), settings.batch_size)
    total = per_epoch * settings.epochs
    dp = None
    if settings.mode == "cdp":
        dp = DPSettings(noise_multiplier=float(settings.noise_multiplier), max_grad_norm=settings.max_grad_norm)
    train_local(model, images, labels, data.spec, epochs=settings.epochs, batch_size=settings.batch_size,
                lr=settings.lr, momentum=settings.momentum, lr_schedule="cosine", optimizer=settings.optimizer,
                dp=dp, seed=seed, rng=rng_factory("central", 0) if dp else None,
                on_step=lambda step, _loss: progress(step / total), cancel=cancel, device=device)
    if dp is None:
        return math.inf, 1.0 / per_epoch, total
    epsilon = compute_epsilon(sample_rate=1.0 / per_epoch, noise_multiplier=float(settings.noise_multiplier),
                              steps=total, delta=settings.delta, accountant=settings.accountant)
    return epsilon, 1.0 / per_epoch, total


def federation_plan(settings: ModeSettings, hospitals: int, image_size: int):
    """The FederationPlan a real federation of these hospitals would run (validated by its own rules)."""
    from core.federation.plan import FederationPlan, default_colluders, default_threshold

    mode = settings.mode
    fscdp = mode == "fscdp"
    colluders = settings.colluders if settings.colluders is not None else default_colluders(hospitals)
    per_round = hospitals if fscdp else max(1, math.ceil(settings.fraction * hospitals))
    threshold = settings.threshold if settings.threshold is not None else (
        default_threshold(hospitals, colluders) if fscdp else per_round)
    plan = FederationPlan(
        name="compare", federation_id="compare", mode=mode, rounds=settings.rounds, hospitals=hospitals,
        threshold=threshold, colluders=colluders if fscdp else 0, model=settings.model,
        image_size=image_size, lr=settings.lr, momentum=settings.momentum,
        server_lr=settings.lr if fscdp else 1.0, server_momentum=settings.momentum if fscdp else 0.0,
        server_lr_schedule=settings.server_lr_schedule if fscdp else "constant",
        delta=settings.delta if mode in PRIVATE else None, accountant=settings.accountant,
        noise_multiplier=settings.noise_multiplier if mode in PRIVATE else None,
        max_grad_norm=settings.max_grad_norm if mode in PRIVATE else None,
        sample_rate=settings.sample_rate if fscdp else None,
        batch_size=None if fscdp else settings.batch_size, local_epochs=None if fscdp else settings.local_epochs,
        secagg=fscdp)
    plan.validate()
    return plan


def chosen_hospitals(round: int, per_round: int, hospitals: int) -> list[int]:
    """F and FPDP: the hospitals that train in ``round`` (1-based), in turn."""
    return [((round - 1) * per_round + j) % hospitals for j in range(per_round)]


def privacy_schedule(settings: ModeSettings, sizes: list[int]) -> list[tuple[float, int]]:
    """(sample rate, DP-SGD steps) the accountant charges: one entry for CDP (the union), one per hospital
    for FPDP and FSCDP (the largest epsilon among them is the mode's). Empty without DP."""
    from core.privacy.accountant import steps_per_epoch

    if settings.mode == "cdp":
        per_epoch = steps_per_epoch(sum(sizes), settings.batch_size)
        return [(1.0 / per_epoch, per_epoch * settings.epochs)]
    if settings.mode not in PRIVATE:
        return []
    plan = federation_plan(settings, len(sizes), 32)
    per_round = plan.threshold
    schedule = []
    for k, size in enumerate(sizes):
        _noise, rate, per = plan.round_cost(size)
        rounds = plan.rounds if plan.secagg else sum(
            k in chosen_hospitals(r, per_round, len(sizes)) for r in range(1, plan.rounds + 1))
        schedule.append((rate, per * rounds))
    return schedule


def _load(model, layout, weights) -> None:
    with torch.no_grad():
        for name, tensor in layout.unflatten(weights).items():
            model.get_parameter(name).copy_(tensor)


def _federated(settings, data, model, cancel, progress, rng_factory, device) -> tuple[float, float, int]:
    from core.federation.aggregation import PlainAggregation, server_gradient
    from core.federation.local_work import train_delta
    from core.federation.server_optimizer import ServerOptimizer
    from core.federation.weights import ParameterLayout, tensors_to_bytes
    from core.privacy.accountant import compute_epsilon

    hospitals = len(data.hospitals)
    plan = federation_plan(settings, hospitals, data.spec.size)
    layout = ParameterLayout(model)
    weights = layout.flatten(dict(model.named_parameters()))
    optimizer = ServerOptimizer(plan.server_optimizer, lr=plan.server_lr, momentum=plan.server_momentum,
                                length=layout.length, schedule=plan.server_lr_schedule, total_steps=plan.rounds)
    ids = [f"h{k:03d}" for k in range(hospitals)]
    parts = [data.part(indices) for indices in data.hospitals]
    images_of = {h: len(part[1]) for h, part in zip(ids, parts, strict=True)}
    taken = dict.fromkeys(ids, 0)
    roster = _roster(plan, ids, images_of) if plan.secagg else None
    per_round = plan.threshold if not plan.secagg else hospitals
    for round in range(1, plan.rounds + 1):
        cancel.check()
        if plan.secagg:
            aggregate = _secure_round(plan, roster, layout, model, weights, parts, ids, round, rng_factory,
                                      data.spec, device)
        else:
            updates = []
            for k in chosen_hospitals(round, per_round, hospitals):
                _load(model, layout, weights)
                images, labels = parts[k]
                result = train_delta(model, layout, images, labels, data.spec, plan, cancel=cancel, device=device)
                updates.append((ids[k], tensors_to_bytes(layout.unflatten(result.vector))))
            aggregate = PlainAggregation(layout, plan.threshold).finish_from(updates, images_of)
        for h in aggregate.included:
            taken[h] += 1
        weights = optimizer.step(weights, server_gradient(plan, aggregate, images_of, max(images_of.values())))
        progress(round / plan.rounds)
    _load(model, layout, weights)
    if plan.mode == "f":
        return math.inf, 0.0, 0
    worst = (0.0, 0.0, 0)  # (epsilon, sample rate, steps) of the hospital the accountant charges most
    for h in ids:
        _noise, rate, per = plan.round_cost(images_of[h])
        steps = per * taken[h]
        if steps:
            epsilon = compute_epsilon(sample_rate=rate, noise_multiplier=float(plan.noise_multiplier), steps=steps,
                                      delta=float(plan.delta), accountant=plan.accountant)
            worst = max(worst, (epsilon, rate, steps))
    return worst


def _roster(plan, ids, images_of):
    from core.federation.roster import FederationRoster, RosterEntry

    entries = tuple(RosterEntry(h, h, os.urandom(32), images_of[h]) for h in ids)
    return FederationRoster(plan.federation_id, "compare", entries)


def _secure_round(plan, roster, layout, model, weights, parts, ids, round, rng_factory, spec, device):
    """Every hospital's noised clipped-gradient sum, summed by the real secure aggregation."""
    import numpy as np

    from core.federation.aggregation import Aggregate
    from core.federation.local_work import fscdp_step
    from core.federation.roster import secagg_params
    from core.secagg import run_round

    vectors = []
    for k, (images, labels) in enumerate(parts):
        _load(model, layout, weights)
        result = fscdp_step(model, layout, images, labels, spec, plan, rng=rng_factory(ids[k], round), device=device)
        vectors.append(result.vector)
    params = secagg_params(plan, roster, round, 1, layout.length)
    result = run_round(params, vectors)
    # run_round names the hospitals h000, h001, ... in order, as ``ids`` does.
    return Aggregate(sorted(result.included), np.asarray(result.values, dtype=np.float64), False)
