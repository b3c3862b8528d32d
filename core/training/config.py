"""The local-training job's config (modes C and CDP)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.device import DEFAULT_DEVICE, check_device_name
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
    # Crop every image to the retina's disc / local-average colour normalisation (core.data.preprocess);
    # recorded in the model card, so inference repeats them.
    fundus_crop: bool = False
    local_contrast: bool = False
    val_fraction: float = 0.2
    seed: int = 0
    # The hospital home (core.home): its ledger, identity key, run logs and image cache. None: the default home.
    home: Path | None = None
    # Sets the ledger's cap when it has none yet; otherwise a limit on this run that never raises the cap.
    max_epsilon: float | None = None
    threads: int | None = None
    device: str = DEFAULT_DEVICE  # core.device: auto, cpu or cuda
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
        check_device_name(self.device)
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


def default_delta(num_examples: int) -> float:
    """1e-5 when that is well below 1/N, else 1/(10 N)."""
    return 1e-5 if 1e-5 < 0.1 / num_examples else 0.1 / num_examples


def resolve_delta(ledger_delta: float | None, requested: float | None, num_examples: int) -> float:
    """The delta a private run states its epsilon at: the ledger's when it has one (every charge composes
    at it; a different requested one is refused), else the requested one or ``default_delta``. Always
    checked to be below 1/N."""
    from core.privacy.accountant import check_delta

    if ledger_delta is not None and requested is not None and requested != ledger_delta:
        raise ConfigError(
            f"The hospital's ledger states every epsilon at delta={ledger_delta:g}, so this run cannot use "
            f"delta={requested:g}; leave delta empty (the ledger's is used), or change the ledger's delta "
            "deliberately (`dopamine ledger set-cap`, or the Privacy page)."
        )
    delta = ledger_delta if ledger_delta is not None else requested
    delta = delta if delta is not None else default_delta(num_examples)
    check_delta(delta, num_examples)
    return delta


@dataclass(frozen=True)
class RunPlan:
    """What a local run will do and cost: the one computation the trainer and the app's preview share."""

    train_images: int
    steps_per_epoch: int
    sample_rate: float  # Poisson rate q = 1 / steps per epoch
    steps: int
    noise_multiplier: float | None  # None for mode C
    delta: float | None
    epsilon: float | None  # of this run alone, at ``delta``; None for mode C
    accountant: str


def plan_run(config: TrainConfig, num_train: int, delta: float | None) -> RunPlan:
    """The run ``config`` describes on ``num_train`` training images; ``delta`` from resolve_delta (CDP)."""
    from core.privacy.accountant import calibrate_noise_multiplier, compute_epsilon, steps_per_epoch

    per_epoch = steps_per_epoch(num_train, config.batch_size)
    rate, steps = 1.0 / per_epoch, per_epoch * config.epochs
    if config.mode != "cdp":
        return RunPlan(num_train, per_epoch, rate, steps, None, None, None, config.accountant)
    assert delta is not None  # a CDP run's delta comes from resolve_delta
    noise = config.noise_multiplier
    if noise is None:
        assert config.target_epsilon is not None  # validate(): a CDP run sets one of the two
        noise = calibrate_noise_multiplier(target_epsilon=float(config.target_epsilon), sample_rate=rate, steps=steps,
                                           delta=float(delta), accountant=config.accountant)
    epsilon = compute_epsilon(sample_rate=rate, noise_multiplier=noise, steps=steps, delta=float(delta),
                              accountant=config.accountant)
    return RunPlan(num_train, per_epoch, rate, steps, noise, delta, epsilon, config.accountant)
