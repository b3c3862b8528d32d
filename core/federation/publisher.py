"""The coordinator's model: its weights and optimizer across restarts, and the signed global model of
every round with its card (ε bound, threat model, evaluation: core.federation.evaluation)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Mapping

import numpy as np

from core import __version__
from core.federation.layout import FederationPaths
from core.federation.model_state import ModelState, initial_state, read_state, write_state
from core.federation.plan import FederationPlan, threat_model_text


class ModelPublisher:
    """Holds the global weights and the server optimizer; writes them and the signed package per round.

    Numpy only: the parameter layout and the initial weights come from the model state files
    (core.federation.model_state), so the coordinator's serving process does not import torch.
    """

    def __init__(self, paths: FederationPaths, plan: FederationPlan, signing_key, *, model_round: int) -> None:
        from core.federation.server_optimizer import ServerOptimizer

        self.paths, self.plan, self.signing_key = paths, plan, signing_key
        path = paths.server_state(model_round)
        if model_round == 0 and not path.exists():  # a folder created before init wrote the initial state
            state = initial_state(plan)
        else:
            state = read_state(path, plan)
        self.layout = state.layout
        self.preprocessing = state.preprocessing
        self.optimizer = ServerOptimizer(plan.server_optimizer, lr=plan.server_lr, momentum=plan.server_momentum,
                                         length=self.layout.length, schedule=plan.server_lr_schedule,
                                         total_steps=plan.rounds)
        self.optimizer.first, self.optimizer.second, self.optimizer.steps = state.first, state.second, state.steps
        self._epsilon_cache: dict[tuple[float, int], float] = {}
        self.weights = state.weights

    def step(self, gradient: np.ndarray) -> None:
        self.weights = self.optimizer.step(self.weights, gradient)

    def snapshot(self) -> tuple:
        """The weights and the optimizer's state (the arrays are replaced by a step, never changed in place)."""
        optimizer = self.optimizer
        return self.weights, optimizer.first, optimizer.second, optimizer.steps

    def restore(self, saved: tuple) -> None:
        """Back to ``snapshot()``: a round whose model could not be written is stepped again on its retry."""
        self.weights, self.optimizer.first, self.optimizer.second, self.optimizer.steps = saved

    def publish(self, round: int, *, contributors: Mapping[str, int],
                rounds_taken: Mapping[str, tuple[int, int]], metrics: dict) -> str:
        """Write the optimizer state and the signed global model of ``round`` (atomically); its SHA-256.

        ``contributors``: name -> declared images of every hospital whose update is in the model;
        ``rounds_taken``: hospital id -> (rounds its update is in, its declared images), for the ε bound.
        """
        from core.models.package import ModelCard, write_package_arrays

        optimizer = self.optimizer
        write_state(self.paths.server_state(round), self.plan, ModelState(
            self.layout, self.weights, optimizer.first, optimizer.second, optimizer.steps, self.preprocessing))
        plan = self.plan
        epsilon, steps = self.epsilon_bound(round, rounds_taken.values())
        card = ModelCard(
            architecture=plan.model, classes=list(plan.classes),
            preprocessing=dict(self.preprocessing), mode=plan.mode,
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
        return write_package_arrays(self.paths.model_package(round), self.layout.unflatten_arrays(self.weights),
                                    card, self.signing_key, shapes=self.layout.shapes)

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

