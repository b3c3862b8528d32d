"""The local-training job's config (modes C and CDP)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError

MODES = ("c", "cdp")


@dataclass
class TrainConfig:
    data: Path
    out: Path
    mode: str = "cdp"
    model: str = "squeezenet1_1"
    labels_csv: Path | None = None
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.05
    momentum: float = 0.9
    lr_schedule: str = "cosine"
    optimizer: str = "sgd"  # "sgd" (with momentum) or "adam" (betas (momentum, 0.999))
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float | None = None
    accountant: str = "rdp"
    image_size: int = 224
    val_fraction: float = 0.2
    seed: int = 0
    # The hospital home (core.home): its ledger, identity key, run logs and image cache. None: the default home.
    home: Path | None = None
    # Sets the ledger's cap when it has none yet; otherwise a limit on this run that never raises the cap.
    max_epsilon: float | None = None
    threads: int | None = None
    device: str = "cpu"
    initial_weights: Path | None = None
    description: str = ""
    schema_version: int = 2  # 2: `home` replaced `ledger`

    def validate(self) -> None:
        """Check values a user typed; raises ConfigError with what to change."""
        if self.mode not in MODES:
            raise ConfigError(f"Mode must be one of {', '.join(MODES)} for local training, not {self.mode!r}.")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("Epochs and batch size must be at least 1.")
        if self.lr <= 0:
            raise ConfigError("The learning rate must be positive.")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError("Momentum must be in [0, 1).")
        if self.lr_schedule not in ("constant", "cosine"):
            raise ConfigError("The learning-rate schedule must be 'constant' or 'cosine'.")
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError("The optimizer must be 'sgd' or 'adam'.")
        if not 0.0 < self.val_fraction < 0.9:
            raise ConfigError("The validation fraction must be between 0 and 0.9.")
        if self.image_size < 16:
            raise ConfigError("The image size must be at least 16 pixels.")
        if self.accountant not in ("rdp", "prv"):
            raise ConfigError("The accountant must be 'rdp' or 'prv'.")
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError("The device must be 'cpu', 'cuda' or 'auto'.")
        if self.mode == "cdp":
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ConfigError("For DP training give exactly one of a noise multiplier or a target epsilon.")
            if self.noise_multiplier is not None and self.noise_multiplier <= 0:
                raise ConfigError("The noise multiplier must be positive.")
            if self.target_epsilon is not None and self.target_epsilon <= 0:
                raise ConfigError("The target epsilon must be positive.")
            if self.max_grad_norm <= 0:
                raise ConfigError("The clipping norm C must be positive.")
        if self.max_epsilon is not None and not self.max_epsilon > 0:
            raise ConfigError("--max-epsilon must be a positive epsilon.")
        if self.delta is not None and not 0.0 < self.delta < 1.0:
            raise ConfigError("Delta must be between 0 and 1 (and below 1/N, the number of training images).")
