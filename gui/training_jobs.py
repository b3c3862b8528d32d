"""Worker-thread jobs of the Train page: the privacy cost of a run before it starts, and the run.

The cost is composed from the same core functions the trainer uses (split, steps per epoch, default δ,
noise calibration, the accountant and the ledger), so the preview matches what the trainer charges.
When δ is left automatic and the hospital's ledger already has one, the ledger's δ is used: one
ledger composes every charge at one δ.
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
    from core.privacy.accountant import calibrate_noise_multiplier, check_delta, compute_epsilon
    from core.training.loop import steps_per_epoch
    from core.training.trainer import default_delta

    if delta is None:
        delta = read_ledger(ledger_path).delta
    train_idx, _val_idx = stratified_split(list(labels), val_fraction, seed)
    num_train = len(train_idx)
    per_epoch = steps_per_epoch(num_train, batch_size)
    sample_rate = 1.0 / per_epoch
    steps = per_epoch * epochs
    delta = delta if delta is not None else default_delta(num_train)
    check_delta(delta, num_train)
    if noise_multiplier is None:
        noise_multiplier = calibrate_noise_multiplier(target_epsilon=float(target_epsilon), sample_rate=sample_rate,
                                                      steps=steps, delta=delta, accountant=accountant)
    epsilon = compute_epsilon(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                              delta=delta, accountant=accountant)
    verdict = check_plan(ledger_path, noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                         delta=delta, accountant=accountant)
    return TrainingCost(num_train, sample_rate, steps, noise_multiplier, delta, accountant, epsilon, verdict)


def run_training(config: Any, *, progress, cancel, on_epoch) -> Any:
    """core.training.trainer.run, with δ taken from the hospital's ledger when left automatic."""
    from core.training.trainer import run

    if config.mode == "cdp" and config.delta is None and config.ledger is not None:
        config.delta = read_ledger(config.ledger).delta
    return run(config, progress=progress, cancel=cancel, on_epoch=on_epoch)


def train_in_child(config: Any, *, progress, cancel, on_epoch) -> Any:
    """run_training in a child process (gui.child_jobs), so training never competes with the window."""
    from core.config import to_dict
    from gui.child_jobs import run_child

    return run_child("train", {"config": to_dict(config)}, progress=progress, cancel=cancel, on_event=on_epoch)
