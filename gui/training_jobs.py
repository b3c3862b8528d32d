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
    """The run's cost from core.training.config.plan_run (what the trainer will charge), against the ledger."""
    from core.data import stratified_split
    from core.training.config import TrainConfig, plan_run, resolve_delta

    train_idx, _val_idx = stratified_split(list(labels), val_fraction, seed)
    num_train = len(train_idx)
    delta = resolve_delta(read_ledger(ledger_path).delta, delta, num_train)
    config = TrainConfig(data=Path("."), out=Path("."), mode="cdp", epochs=epochs, batch_size=batch_size,
                         noise_multiplier=noise_multiplier, target_epsilon=target_epsilon, accountant=accountant)
    run = plan_run(config, num_train, delta)
    verdict = check_plan(ledger_path, noise_multiplier=run.noise_multiplier, sample_rate=run.sample_rate,
                         steps=run.steps, delta=delta, accountant=accountant)
    return TrainingCost(num_train, run.sample_rate, run.steps, run.noise_multiplier, delta, accountant, run.epsilon,
                        verdict)


def train_in_child(config: Any, *, progress, cancel, on_epoch) -> Any:
    """run_training in a child process (gui.child_jobs), so training never competes with the window."""
    from core.config import to_dict
    from gui.child_jobs import run_child

    return run_child("train", {"config": to_dict(config)}, progress=progress, cancel=cancel, on_event=on_epoch)
