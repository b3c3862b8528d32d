"""The coordinator's optimizer, applied to the aggregate of each round (a flat float64 vector).

FSCDP: the gradient is the noisy DP-SGD estimate (the sum over the union's Poisson sample divided
by the expected batch size); F/FPDP: minus the averaged model delta. Anything done here is
post-processing of a differentially private release: it costs no privacy.

- "sgd": heavy-ball momentum, as torch.optim.SGD (v = mu*v + g; w -= lr*v). With lr 1 and
  momentum 0 on F/FPDP deltas this is plain FedAvg.
- "adam": Adam (Kingma & Ba) with beta1 = momentum, beta2 = 0.999, eps = 1e-8, bias-corrected; it
  rescales each coordinate by its running noise-plus-signal magnitude, which suits DP noise.
"""

from __future__ import annotations

import math

import numpy as np

SERVER_OPTIMIZERS = ("sgd", "adam")
LR_SCHEDULES = ("constant", "cosine")
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8


class ServerOptimizer:
    """``schedule`` "cosine" decays the learning rate from ``lr`` to 0 over ``total_steps`` (the plan's
    rounds): large steps early, small ones at the end, so the last model is not the product of a
    single large noisy step."""

    def __init__(self, kind: str, *, lr: float, momentum: float, length: int, schedule: str = "constant",
                 total_steps: int = 1) -> None:
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimizer {kind!r}")
        if schedule not in LR_SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {schedule!r}")
        self.kind = kind
        self.base_lr = lr
        self.schedule = schedule
        self.total_steps = max(1, total_steps)
        self.momentum = momentum
        self.first = np.zeros(length, dtype=np.float64)  # SGD velocity / Adam first moment
        self.second = np.zeros(length, dtype=np.float64)  # Adam second moment (unused by SGD)
        self.steps = 0

    @property
    def lr(self) -> float:
        """The learning rate of the next step."""
        if self.schedule == "cosine":
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * min(self.steps, self.total_steps) / self.total_steps))
        return self.base_lr

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """The new weights after one step on ``gradient``."""
        lr = self.lr
        self.steps += 1
        if self.kind == "sgd":
            self.first = self.momentum * self.first + gradient
            return weights - lr * self.first
        self.first = self.momentum * self.first + (1 - self.momentum) * gradient
        self.second = ADAM_BETA2 * self.second + (1 - ADAM_BETA2) * gradient * gradient
        first = self.first / (1 - self.momentum**self.steps) if self.momentum > 0 else self.first
        second = self.second / (1 - ADAM_BETA2**self.steps)
        return weights - lr * first / (np.sqrt(second) + ADAM_EPS)
