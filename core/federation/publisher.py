"""The coordinator's model: its weights and optimizer across restarts, the signed global model of every
round with its card (ε bound, threat model, evaluation), and the evaluation on the coordinator's own
held-out set."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from core import __version__
from core.config import atomic_write_bytes
from core.errors import FederationError
from core.federation.layout import CoordinatorSettings, FederationPaths
from core.federation.plan import FederationPlan, threat_model_text

log = logging.getLogger("dopamine.coordinator")


class ModelPublisher:
    """Holds the global weights and the server optimizer; writes them and the signed package per round."""

    def __init__(self, paths: FederationPaths, plan: FederationPlan, signing_key, *, model_round: int) -> None:
        import torch

        from core.federation.server_optimizer import ServerOptimizer
        from core.federation.weights import ParameterLayout
        from core.models.registry import build_model

        self.paths, self.plan, self.signing_key = paths, plan, signing_key
        torch.manual_seed(plan.seed)  # the initial weights are public: every hospital builds the same model
        self.model = build_model(plan.model, len(plan.classes))
        self.layout = ParameterLayout(self.model)
        self.optimizer = ServerOptimizer(plan.server_optimizer, lr=plan.server_lr, momentum=plan.server_momentum,
                                         length=self.layout.length, schedule=plan.server_lr_schedule,
                                         total_steps=plan.rounds)
        self._epsilon_cache: dict[tuple[float, int], float] = {}
        self.weights = self._load(model_round)

    def _load(self, model_round: int) -> np.ndarray:
        from core.federation.weights import tensors_from_bytes

        path = self.paths.server_state(model_round)
        if model_round == 0 and not path.exists():
            return self.layout.flatten(dict(self.model.named_parameters()))
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FederationError(f"The coordinator's model state {path} is missing ({exc}); restore the folder "
                                  "from a backup.") from exc
        names = self.layout.names
        shapes = {f"{part}/{k}": v for part in "wmv" for k, v in self.layout.shapes.items()} | {"steps": (1,)}
        tensors = tensors_from_bytes(data, expected=shapes, what="coordinator model state")
        self.optimizer.first = self.layout.flatten({k: tensors[f"m/{k}"] for k in names})
        self.optimizer.second = self.layout.flatten({k: tensors[f"v/{k}"] for k in names})
        self.optimizer.steps = int(tensors["steps"][0])
        return self.layout.flatten({k: tensors[f"w/{k}"] for k in names})

    def step(self, gradient: np.ndarray) -> None:
        self.weights = self.optimizer.step(self.weights, gradient)

    def load_into_model(self):
        """The torch model holding the current weights (for evaluation)."""
        import torch

        with torch.no_grad():
            for name, tensor in self.layout.unflatten(self.weights).items():
                self.model.get_parameter(name).copy_(tensor)
        return self.model

    def publish(self, round: int, *, contributors: Mapping[str, int],
                rounds_taken: Mapping[str, tuple[int, int]], metrics: dict) -> str:
        """Write the optimizer state and the signed global model of ``round`` (atomically); its SHA-256.

        ``contributors``: name -> declared images of every hospital whose update is in the model;
        ``rounds_taken``: hospital id -> (rounds its update is in, its declared images), for the ε bound.
        """
        import torch

        from core.data.preprocess import Preprocessing
        from core.federation.weights import tensors_to_bytes
        from core.models.package import ModelCard, write_package

        state = {f"w/{k}": v for k, v in self.layout.unflatten(self.weights).items()}
        state |= {f"m/{k}": v for k, v in self.layout.unflatten(self.optimizer.first).items()}
        state |= {f"v/{k}": v for k, v in self.layout.unflatten(self.optimizer.second).items()}
        state["steps"] = torch.tensor([float(self.optimizer.steps)], dtype=torch.float32)
        atomic_write_bytes(self.paths.server_state(round), tensors_to_bytes(state))
        plan = self.plan
        epsilon, steps = self.epsilon_bound(round, rounds_taken.values())
        card = ModelCard(
            architecture=plan.model, classes=list(plan.classes),
            preprocessing=Preprocessing(size=plan.image_size).to_dict(), mode=plan.mode,
            epsilon=epsilon, delta=plan.delta if plan.is_private else None,
            accountant=plan.accountant if plan.is_private else None,
            noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
            max_grad_norm=plan.max_grad_norm, steps=steps, rounds=round, hospitals=len(contributors),
            image_counts=dict(contributors), metrics={"evaluation": metrics} if metrics else {},
            created=dt.datetime.fromtimestamp(time.time(), dt.UTC).isoformat(timespec="seconds"),
            software_version=__version__,
            description=f"Federated {plan.mode.upper()} model of {plan.name}, round {round} of {plan.rounds}. "
                        f"{threat_model_text(plan)}",
        )
        return write_package(self.paths.model_package(round), self._state_dict(), card, self.signing_key)

    def _state_dict(self) -> dict:
        params = self.layout.unflatten(self.weights)
        return {name: params.get(name, tensor.detach().clone()).contiguous()
                for name, tensor in self.model.state_dict().items()}

    def epsilon_bound(self, round: int, taken: Iterable[tuple[int, int]]) -> tuple[float | None, int | None]:
        """The largest ε any hospital has spent on this model (from its rounds and declared images)."""
        plan = self.plan
        if not plan.is_private:
            return None, None
        best, best_steps = 0.0, 0
        if round == 0:
            return best, best_steps
        for rounds, images in taken:
            noise, rate, per_round = plan.round_cost(images)
            steps = per_round * rounds
            if steps > 0:
                epsilon = self._epsilon(rate, steps)
                if epsilon >= best:
                    best, best_steps = epsilon, steps
        return best, best_steps

    def _epsilon(self, sample_rate: float, steps: int) -> float:
        # One accountant call costs a noticeable fraction of a second; the same (q, steps) recurs for
        # every hospital with the same image count.
        from core.privacy.accountant import compute_epsilon

        key = (sample_rate, steps)
        if key not in self._epsilon_cache:
            assert self.plan.noise_multiplier is not None and self.plan.delta is not None  # a private plan's
            self._epsilon_cache[key] = compute_epsilon(
                sample_rate=sample_rate, noise_multiplier=float(self.plan.noise_multiplier), steps=steps,
                delta=float(self.plan.delta), accountant=self.plan.accountant)
        return self._epsilon_cache[key]

    def prune(self, round: int, keep: int) -> None:
        for old in range(max(0, round - keep - 5), round - keep):
            self.paths.model_package(old).unlink(missing_ok=True)
            self.paths.server_state(old).unlink(missing_ok=True)


class Evaluation:
    """The coordinator's own labelled held-out images (coordinator.toml's eval_data), decoded once."""

    def __init__(self, settings: CoordinatorSettings, plan: FederationPlan, cache_dir: Path) -> None:
        from core.data import Preprocessing, load_tensors, validate
        from core.inference.input_check import reference_statistics

        assert settings.eval_data is not None  # the coordinator evaluates only when eval_data is set
        report = validate(Path(settings.eval_data), min_size=16)
        samples = [s for s in report.usable_samples if s.label is not None]
        if not samples:
            raise FederationError(f"The evaluation folder {settings.eval_data} has no usable labelled images.")
        self.spec = Preprocessing(size=plan.image_size)
        self.images, self.labels = load_tensors(samples, self.spec, cache_dir=cache_dir)
        self.num_classes = len(plan.classes)
        self.classes = list(plan.classes)
        # Published in every evaluated card, so a hospital can tell how the test images look and whose they are.
        self.reference = reference_statistics(self.images, report.make_up)
        self.described = f"the coordinator's own held-out images in folder {Path(settings.eval_data).name}"
        self.every = settings.eval_every
        self.last_round = plan.rounds
        log.info("evaluation set: %d images from %s", len(samples), settings.eval_data)

    def due(self, round: int) -> bool:
        return round % self.every == 0 or round == self.last_round

    def evaluate(self, model) -> dict:
        from core.inference.assessment import held_out_evaluation
        from core.training.loop import evaluate_model

        metrics = evaluate_model(model, self.images, self.labels, self.spec, num_classes=self.num_classes)
        # Accuracy, kappa and recall per class, the majority baseline, the test set's size and holder, and
        # that these figures (a release about the held-out images) are not covered by epsilon.
        return held_out_evaluation(metrics, self.labels.tolist(), self.classes, described=self.described,
                                   held_by="the coordinator", reference=self.reference)
