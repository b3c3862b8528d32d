"""Worker-thread jobs of the Train page: the privacy cost of a run before it starts, and the run.

The cost is composed from the same core functions the trainer uses (split, steps per epoch, the δ rule,
noise calibration, the accountant and the ledger), so the preview matches what the trainer charges.
When the hospital's ledger already has a δ, that δ is used (one ledger composes every charge at one δ)
and a different one typed on the page is refused, as the trainer refuses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gui.ledger_jobs import PlanVerdict, check_plan, read_ledger


@dataclass
class TrainingCost:
    train_images: int
    sample_rate: float
    steps: int
    noise_multiplier: float
    delta: float
    accountant: str
    epsilon: float  # of this run alone
    verdict: PlanVerdict  # the hospital's ledger before/after, against its cap


def estimate_training_cost(labels: Sequence[int], *, val_fraction: float, seed: int, batch_size: int,
                           epochs: int, noise_multiplier: float | None, target_epsilon: float | None,
                           delta: float | None, accountant: str, ledger_path: Path) -> TrainingCost:
    from core.data import stratified_split
    from core.privacy.accountant import calibrate_noise_multiplier, compute_epsilon
    from core.training.loop import steps_per_epoch
    from core.training.trainer import resolve_delta

    train_idx, _val_idx = stratified_split(list(labels), val_fraction, seed)
    num_train = len(train_idx)
    per_epoch = steps_per_epoch(num_train, batch_size)
    sample_rate = 1.0 / per_epoch
    steps = per_epoch * epochs
    delta = resolve_delta(read_ledger(ledger_path).delta, delta, num_train)
    if noise_multiplier is None:
        noise_multiplier = calibrate_noise_multiplier(target_epsilon=float(target_epsilon), sample_rate=sample_rate,
                                                      steps=steps, delta=delta, accountant=accountant)
    epsilon = compute_epsilon(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                              delta=delta, accountant=accountant)
    verdict = check_plan(ledger_path, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                         delta=delta, accountant=accountant)
    return TrainingCost(num_train, sample_rate, steps, noise_multiplier, delta, accountant, epsilon, verdict)


def run_training(config: Any, *, progress, cancel, on_epoch) -> Any:
    """core.training.trainer.run in the hospital home ``config.home`` (its ledger's δ, its cache, its key)."""
    from core.training.trainer import run

    return run(config, progress=progress, cancel=cancel, on_epoch=on_epoch)


def train_in_child(config: Any, *, progress, cancel, on_epoch) -> Any:
    """run_training in a child process (gui.child_jobs), so training never competes with the window."""
    from core.config import to_dict
    from gui.child_jobs import run_child

    return run_child("train", {"config": to_dict(config)}, progress=progress, cancel=cancel, on_event=on_epoch)
