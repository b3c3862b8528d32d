"""Deterministic stratified train/validation split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.errors import ConfigError


def stratified_split(labels: Sequence[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices (train, val), each sorted. Every class with >= 2 items has >= 1 in each part.

    Each class is shuffled with its own generator derived from (seed, class), so the split of one class
    does not change when images of another class are added.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"Validation fraction {val_fraction} must be at least 0 and below 1 (e.g. 0.2).")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(index)
    train: list[int] = []
    val: list[int] = []
    for label in sorted(by_class):
        indices = np.array(by_class[label])
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, label & 0xFFFFFFFF])
        rng.shuffle(indices)
        count = len(indices)
        n_val = int(round(count * val_fraction))
        if val_fraction > 0 and count >= 2:
            n_val = min(max(n_val, 1), count - 1)
        elif count < 2:
            n_val = 0
        val.extend(int(i) for i in indices[:n_val])
        train.extend(int(i) for i in indices[n_val:])
    return sorted(train), sorted(val)
