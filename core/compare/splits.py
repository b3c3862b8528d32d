"""How a labelled collection becomes K virtual hospitals and a held-out test set.

``iid``: equal hospitals with the collection's class proportions (the Dopamine paper's setting);
``dirichlet:ALPHA``: label skew, each class shared out by a Dirichlet(ALPHA) draw (small ALPHA: hospitals
see few classes); ``folders``: the collection's own top-level folders are the hospitals, and a folder
named ``test`` is the test set. Every split is disjoint and covers every image it was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ConfigError


@dataclass(frozen=True)
class Split:
    hospitals: list[list[int]]  # sample indices per hospital, sorted
    test: list[int]  # sample indices held out for testing, sorted
    names: list[str]

    def check(self, total: int) -> None:
        """Disjoint and complete (a software error otherwise)."""
        seen = [i for part in (*self.hospitals, self.test) for i in part]
        if len(seen) != len(set(seen)) or set(seen) != set(range(total)):
            raise AssertionError("a split must be disjoint and cover every image")


def parse_split(text: str) -> tuple[str, float | None]:
    """"iid" | "dirichlet:ALPHA" | "folders" -> (kind, alpha)."""
    if text in ("iid", "folders"):
        return text, None
    if text.startswith("dirichlet:"):
        try:
            alpha = float(text.split(":", 1)[1])
        except ValueError:
            alpha = -1.0
        if alpha > 0:
            return "dirichlet", alpha
    raise ConfigError(f"--split {text!r}: use iid, dirichlet:ALPHA (ALPHA > 0, e.g. dirichlet:0.5) or folders.")


def _test_indices(labels: Sequence[int], fraction: float, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(train, test): the test set takes ``fraction`` of every class (at least one where a class has two)."""
    train, test = [], []
    for label in sorted(set(labels)):
        members = np.flatnonzero(np.asarray(labels) == label)
        rng.shuffle(members)
        count = int(round(len(members) * fraction))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        test += members[:count].tolist()
        train += members[count:].tolist()
    return train, test


def split_iid(labels: Sequence[int], hospitals: int, *, seed: int, test_fraction: float) -> Split:
    """Equal hospitals, each with the collection's class proportions (classes dealt out in turn)."""
    rng = np.random.default_rng(seed)
    train, test = _test_indices(labels, test_fraction, rng)
    parts: list[list[int]] = [[] for _ in range(hospitals)]
    turn = 0
    for label in sorted(set(labels)):
        members = [i for i in train if labels[i] == label]
        rng.shuffle(members)
        for index in members:  # dealing keeps sizes within one and proportions equal
            parts[turn % hospitals].append(int(index))
            turn += 1
    return Split([sorted(p) for p in parts], sorted(test), [f"hospital {k + 1}" for k in range(hospitals)])


def split_dirichlet(labels: Sequence[int], hospitals: int, *, alpha: float, seed: int,
                    test_fraction: float) -> Split:
    """Label skew: each class's images are shared out in Dirichlet(alpha) proportions."""
    rng = np.random.default_rng(seed)
    train, test = _test_indices(labels, test_fraction, rng)
    parts: list[list[int]] = [[] for _ in range(hospitals)]
    for label in sorted(set(labels)):
        members = np.array([i for i in train if labels[i] == label])
        rng.shuffle(members)
        shares = rng.dirichlet(np.full(hospitals, alpha))
        cuts = (np.cumsum(shares)[:-1] * len(members)).round().astype(int)
        for k, chunk in enumerate(np.split(members, cuts)):
            parts[k] += chunk.tolist()
    if any(not part for part in parts):
        raise ConfigError(f"A Dirichlet({alpha:g}) split left a hospital without images; use fewer hospitals, a "
                          "larger ALPHA or more images.")
    return Split([sorted(int(i) for i in p) for p in parts], sorted(test),
                 [f"hospital {k + 1}" for k in range(hospitals)])


def split_folders(groups: Sequence[str]) -> Split:
    """The collection's own folders: ``groups[i]`` is sample i's top-level folder ("test" is the test set)."""
    names = sorted({g for g in groups if g != "test"})
    if len(names) < 2 or "test" not in groups:
        raise ConfigError("--split folders needs at least two hospital folders and a folder named test beside them "
                          "(DATA/hospital_01/<class>/..., DATA/test/<class>/...).")
    hospitals = [[i for i, g in enumerate(groups) if g == name] for name in names]
    return Split(hospitals, [i for i, g in enumerate(groups) if g == "test"], names)
