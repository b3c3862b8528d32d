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

import numpy as np

SERVER_OPTIMIZERS = ("sgd", "adam")
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8


class ServerOptimizer:
    def __init__(self, kind: str, *, lr: float, momentum: float, length: int) -> None:
        if kind not in SERVER_OPTIMIZERS:
            raise ValueError(f"unknown server optimizer {kind!r}")
        self.kind = kind
        self.lr = lr
        self.momentum = momentum
        self.first = np.zeros(length, dtype=np.float64)  # SGD velocity / Adam first moment
        self.second = np.zeros(length, dtype=np.float64)  # Adam second moment (unused by SGD)
        self.steps = 0

    def step(self, weights: np.ndarray, gradient: np.ndarray) -> np.ndarray:
        """The new weights after one step on ``gradient``."""
        self.steps += 1
        if self.kind == "sgd":
            self.first = self.momentum * self.first + gradient
            return weights - self.lr * self.first
        self.first = self.momentum * self.first + (1 - self.momentum) * gradient
        self.second = ADAM_BETA2 * self.second + (1 - ADAM_BETA2) * gradient * gradient
        first = self.first / (1 - self.momentum**self.steps) if self.momentum > 0 else self.first
        second = self.second / (1 - ADAM_BETA2**self.steps)
        return weights - self.lr * first / (np.sqrt(second) + ADAM_EPS)
