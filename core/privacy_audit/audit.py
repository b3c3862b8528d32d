"""The privacy audit job: one canary run, the one-run bound, and the accountant's epsilon beside it."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

from core.errors import ConfigError
from core.jobs import NEVER_CANCELLED, CancelToken, ProgressFn, no_progress
from core.privacy_audit.bound import OneRunBound, one_run_bound

AUDIT_MODES = ("cdp", "fscdp")
MODE_TITLES = {"cdp": "local DP-SGD (CDP)", "fscdp": "Dopamine federation (FSCDP)"}

LIMITS = (
    "An audit measures one run of the code on synthetic data. It can show that the code leaks more than "
    "its epsilon claims (too little noise, a layer that mixes examples, a release the accountant does not "
    "count); it cannot show that the code is private. It cannot see a noise seed with too few bits, a "
    "coordinator that shows hospitals different survivor sets, or anything else that needs an attacker "
    "outside the run (tests/adversary/ plays those). Its bound is capped by the number of canaries, so a "
    "large epsilon cannot be confirmed as tight, and a small measured value does not mean little leaks."
)


@dataclass
class AuditConfig:
    """What to audit. The privacy settings are the hospital's planned ones; the rest sizes the audit."""

    mode: str = "cdp"  # "cdp": local DP-SGD; "fscdp": a Dopamine federation, K hospitals in one process
    noise_multiplier: float = 1.0
    sample_rate: float = 0.1  # q (local runs round it to 1 / batches per epoch)
    steps: int = 100  # DP-SGD steps (cdp) or rounds (fscdp)
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    accountant: str = "rdp"
    gradient_canaries: int = 1000  # white-box (Dirac) canaries
    input_canaries: int = 100  # black-box canaries: out-of-distribution images with random labels
    real_images: int = 64  # synthetic fundus images per hospital
    image_size: int = 32
    model: str = "small_cnn"
    num_classes: int = 5
    lr: float = 0.1
    hospitals: int = 3  # K (fscdp)
    threshold: int = 3  # m (fscdp)
    colluders: int = 1  # t (fscdp): the auditor plays the coordinator and this many hospitals
    confidence: float = 0.95
    # Synthetic images and the canaries' coins only; DP noise and sampling always come from a fresh DPRandom.
    seed: int | None = None
    # Power checks only: the mechanism runs with sigma * factor while the accountant is told sigma.
    broken_noise_factor: float = 1.0
    schema_version: int = 1

    def validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        need(self.mode in AUDIT_MODES, f"The audit mode must be cdp or fscdp, not {self.mode!r}.")
        need(_number(self.noise_multiplier) and self.noise_multiplier >= 0, "The noise multiplier must be >= 0.")
        need(_number(self.sample_rate) and 0 < self.sample_rate <= 1, "The sample rate q must be in (0, 1].")
        need(_whole(self.steps) and self.steps >= 1, "The audit needs at least 1 step (or round).")
        need(_number(self.max_grad_norm) and self.max_grad_norm > 0, "The clipping norm C must be positive.")
        need(_number(self.delta) and 0 < self.delta < 1, "Delta must be in (0, 1), e.g. 1e-5.")
        need(self.accountant in ("rdp", "prv"), "The accountant must be rdp or prv.")
        need(_whole(self.gradient_canaries) and 10 <= self.gradient_canaries <= 65536,
             "Use between 10 and 65536 gradient canaries (1000 is a good start).")
        need(_whole(self.input_canaries) and (self.input_canaries == 0 or self.input_canaries >= 10),
             "Use 0 input canaries, or at least 10.")
        need(_whole(self.real_images) and self.real_images >= 1, "The audit needs at least 1 synthetic image.")
        need(_whole(self.image_size) and 16 <= self.image_size <= 256, "The image size must be 16-256 pixels.")
        need(_whole(self.num_classes) and self.num_classes >= 2, "A model needs at least 2 classes.")
        need(_number(self.lr) and self.lr > 0, "The learning rate must be positive.")
        need(_number(self.confidence) and 0.5 <= self.confidence < 1, "The confidence must be in [0.5, 1).")
        need(_number(self.broken_noise_factor) and self.broken_noise_factor >= 0, "The noise factor must be >= 0.")
        if self.mode == "fscdp":
            need(_whole(self.hospitals) and self.hospitals >= 2, "A federation audit needs at least 2 hospitals.")
            need(_whole(self.colluders) and self.colluders >= 1,
                 "The auditor plays one hospital besides the coordinator: colluders t must be at least 1.")
            need(_whole(self.threshold) and self.colluders < self.threshold <= self.hospitals
                 and 2 * self.threshold > self.hospitals + self.colluders,
                 f"The threshold m must satisfy t < m <= K and 2m > K + t (K = {self.hospitals}, t = {self.colluders}).")


@dataclass
class AuditResult:
    """measured at least ``epsilon_lower`` (with ``confidence``); guaranteed at most ``epsilon``."""

    config: dict
    epsilon: float  # the accountant's, for the claimed sigma (inf without noise)
    epsilon_lower: float  # the larger of the kinds' bounds; both kinds share the confidence
    bounds: dict[str, OneRunBound]
    confidence: float
    sample_rate: float
    steps: int
    threat_model: str
    seconds: float
    scores: dict[str, dict[str, list]] = field(default_factory=dict)
    images_per_hospital: list[int] = field(default_factory=list)
    limits: str = LIMITS

    @property
    def exceeds_claim(self) -> bool:
        """An epsilon_lower above the accountant's epsilon: the code or the accounting is wrong."""
        return self.epsilon_lower > self.epsilon

    @property
    def tightness(self) -> float:
        return self.epsilon_lower / self.epsilon if 0 < self.epsilon < math.inf else 0.0

    def summary(self) -> str:
        guaranteed = "no finite guarantee (no noise)" if math.isinf(self.epsilon) else f"guaranteed at most ε = {self.epsilon:.3g}"
        return (f"Measured at least ε = {self.epsilon_lower:.3g} ({self.confidence:.0%} confidence); {guaranteed} "
                f"(δ = {self.config['delta']:g}, {self.config['accountant'].upper()}).")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["bounds"] = {kind: bound.to_dict() for kind, bound in self.bounds.items()}
        data["epsilon"] = None if math.isinf(self.epsilon) else self.epsilon
        data["epsilon_infinite"] = math.isinf(self.epsilon)
        data["exceeds_claim"] = self.exceeds_claim
        data["tightness"] = self.tightness
        data["summary"] = self.summary()
        return data

    @classmethod
    def from_dict(cls, data: dict) -> AuditResult:
        """The result ``to_dict`` wrote (for a result that crossed a process boundary as JSON)."""
        fields = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        fields["epsilon"] = math.inf if data.get("epsilon") is None else float(data["epsilon"])
        fields["bounds"] = {kind: OneRunBound(**bound) for kind, bound in data["bounds"].items()}
        return cls(**fields)


def run(config: AuditConfig, *, progress: ProgressFn = no_progress, cancel: CancelToken = NEVER_CANCELLED) -> AuditResult:
    """Train once with canaries through the product's code (config.mode) and bound epsilon from below."""
    from core.privacy_audit.runners import run_fscdp, run_local

    config.validate()
    started = time.monotonic()
    runner = run_local if config.mode == "cdp" else run_fscdp
    outcome = runner(config, progress=progress, cancel=cancel)
    progress(0.96, "Computing the lower bound")
    kinds = {"gradient": (outcome.gradient_scores, outcome.gradient_included)}
    if config.input_canaries:
        kinds["input"] = (outcome.input_scores, outcome.input_included)
    # Reporting the better of two kinds is two tests: each gets half the error probability.
    confidence = 1.0 - (1.0 - config.confidence) / len(kinds)
    bounds = {kind: one_run_bound(scores, included, delta=config.delta, confidence=confidence)
              for kind, (scores, included) in kinds.items()}
    progress(1.0, "Audit done")
    return AuditResult(
        config=asdict(config), epsilon=outcome.epsilon, epsilon_lower=max(b.epsilon_lower for b in bounds.values()),
        bounds=bounds, confidence=config.confidence, sample_rate=outcome.sample_rate, steps=outcome.steps,
        threat_model=outcome.threat_model, seconds=time.monotonic() - started,
        scores={kind: {"scores": [float(s) for s in scores], "included": [bool(i) for i in included]}
                for kind, (scores, included) in kinds.items()},
        images_per_hospital=outcome.images_per_hospital,
    )


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
