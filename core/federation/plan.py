"""The federation plan: every setting all parties must agree on, hashed so nobody trains on another.

The plan travels in every invitation; a hospital compares the hash the coordinator serves with the
one in its invitation before sending anything.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from core.config import from_dict, load_toml, save_toml, to_dict
from core.errors import ConfigError

MODES = ("f", "fpdp", "fscdp")
MODE_NAMES = {
    "f": "F (federated averaging, no differential privacy)",
    "fpdp": "FPDP (local DP-SGD at each hospital, noised model deltas)",
    "fscdp": "FSCDP (Dopamine: one DP-SGD step per round, secure aggregation)",
}
DEFAULT_CLASSES = ["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"]
MAX_HOSPITALS = 10_000  # what one secure-aggregation round carries (core.secagg.messages.MAX_ENTRIES)
MAX_IMAGE_SIZE = 2048  # core.data.preprocess.MAX_SIZE: the largest model input a card may name


def default_colluders(hospitals: int) -> int:
    """t = 1 whenever there are peers: every participant knows its own noise and receives the released sum."""
    return 1 if hospitals >= 2 else 0


def default_threshold(hospitals: int, colluders: int | None = None) -> int:
    """About two thirds of the hospitals, at least 2, and never below the rule 2m > K + t (so m > t too).

    With K = 3 and t = 1 that is m = 3: no dropout is tolerated; K = 4, t = 1 gives m = 3.
    """
    if hospitals <= 1:
        return 1
    colluders = default_colluders(hospitals) if colluders is None else colluders
    return min(hospitals, max(2, math.ceil(2 * hospitals / 3), (hospitals + colluders) // 2 + 1))


EVALUATION_NOTE = ("The coordinator may score each published model on held-out images of its own and put accuracy "
                   "and κ in the model card. Those figures are a release about its test patients that the privacy "
                   "guarantee (ε) does not cover.")


def threat_model_text(plan: FederationPlan) -> str:
    """One sentence: against whom the plan's epsilon holds."""
    if not plan.is_private:
        return "No differential privacy: the model updates themselves are not protected."
    if plan.mode == "fpdp":
        return ("Each hospital's update is differentially private on its own, against the coordinator and "
                "every other hospital.")
    if plan.colluders == 0:
        return ("Epsilon holds against the coordinator and outsiders only (t = 0): another hospital, which "
                "knows its own noise share, sees less noise than epsilon assumes.")
    who = "1 other hospital" if plan.colluders == 1 else f"{plan.colluders} other hospitals"
    return f"Epsilon holds against the coordinator together with up to {who} (t = {plan.colluders})."


@dataclass
class FederationPlan:
    """What every hospital signs up for. Values not used by a mode are None (and not hashed)."""

    name: str
    federation_id: str
    mode: str
    rounds: int
    hospitals: int
    threshold: int
    # t: hospitals that may collude with the coordinator; FSCDP noise and the threshold rule allow for them.
    colluders: int = 1
    # The names of the K hospitals, in invitation order (ids h01, h02, ...): the roster hospitals confirm.
    hospital_names: list[str] = field(default_factory=list)
    # Attempts of one round a hospital takes part in: each attempt is a fresh release, charged again.
    max_attempts: int = 5
    model: str = "small_cnn"
    classes: list[str] = field(default_factory=lambda: list(DEFAULT_CLASSES))
    image_size: int = 64
    lr: float = 0.1
    momentum: float = 0.9
    # The coordinator's optimizer, applied to the aggregate (FSCDP: the averaged noisy gradient;
    # F/FPDP: minus the averaged model delta, so server_lr=1, momentum=0 is plain FedAvg).
    server_lr: float = 1.0
    server_momentum: float = 0.0  # Adam: beta1
    server_optimizer: str = "sgd"  # "sgd" | "adam" (core.federation.server_optimizer)
    server_lr_schedule: str = "constant"  # "constant" | "cosine" (to 0 over the plan's rounds)
    delta: float | None = None
    accountant: str = "rdp"
    noise_multiplier: float | None = None
    max_grad_norm: float | None = None
    sample_rate: float | None = None
    batch_size: int | None = None
    local_epochs: int | None = None
    secagg: bool = False
    # F/FPDP with secure aggregation: each (image-count weighted) delta is clipped to this L2 norm so
    # its fixed-point encoding cannot wrap around.
    update_bound: float | None = None
    seed: int = 0
    schema_version: int = 1

    def validate(self) -> None:
        def need(condition: bool, message: str) -> None:
            if not condition:
                raise ConfigError(message)

        need(self.mode in MODES, f"Unknown federation mode {self.mode!r}; choose one of f, fpdp, fscdp.")
        need(bool(self.name.strip()), "The federation needs a name (--name).")
        need(self.rounds >= 1, "A federation needs at least one round (--rounds).")
        need(1 <= self.hospitals <= MAX_HOSPITALS,
             f"A federation needs between 1 and {MAX_HOSPITALS} hospitals (--hospitals).")
        need(1 <= self.threshold <= self.hospitals,
             f"The threshold must be between 1 and the number of hospitals ({self.hospitals}).")
        need(0 <= self.colluders < max(self.hospitals, 1),
             f"The colluding hospitals t must be between 0 and {max(self.hospitals - 1, 0)} (--colluders).")
        need(not self.hospital_names or (len(self.hospital_names) == self.hospitals
                                         and len(set(self.hospital_names)) == self.hospitals
                                         and all(n.strip() for n in self.hospital_names)),
             "Give one distinct, non-empty name per hospital.")
        need(1 <= self.max_attempts <= 100, "Attempts per round must be between 1 and 100 (--max-attempts).")
        need(16 <= self.image_size <= MAX_IMAGE_SIZE, f"The image size must be from 16 to {MAX_IMAGE_SIZE} pixels.")
        need(len(self.classes) >= 2, "A model needs at least 2 classes.")
        need(self.lr > 0 and self.server_lr > 0, "Learning rates must be positive.")
        need(0 <= self.momentum < 1 and 0 <= self.server_momentum < 1, "Momentum must be in [0, 1).")
        need(self.accountant in ("rdp", "prv"), "The accountant must be rdp or prv.")
        need(self.server_optimizer in ("sgd", "adam"), "The server optimizer must be sgd or adam.")
        need(self.server_lr_schedule in ("constant", "cosine"), "The server learning-rate schedule must be constant or cosine.")
        if self.mode == "fscdp":
            need(self.secagg, "FSCDP (Dopamine) needs secure aggregation.")
            need(self.sample_rate is not None and 0 < self.sample_rate <= 1,
                 "FSCDP needs a sample rate q in (0, 1] (--sample-rate).")
            need(self.batch_size is None, "FSCDP uses --sample-rate, not --batch-size.")
        else:
            need(self.batch_size is not None and self.batch_size >= 1,
                 "F and FPDP need a local batch size (--batch-size).")
            need(self.local_epochs is not None and self.local_epochs >= 1,
                 "F and FPDP need at least one local epoch (--local-epochs).")
            need(self.sample_rate is None, "F and FPDP use --batch-size, not --sample-rate.")
            if self.secagg:
                need(self.update_bound is not None and self.update_bound > 0,
                     "Secure aggregation in F/FPDP needs a positive update bound.")
        if self.mode in ("fpdp", "fscdp"):
            need(self.noise_multiplier is not None and self.noise_multiplier > 0,
                 "This mode needs a positive noise multiplier (--noise-multiplier).")
            need(self.max_grad_norm is not None and self.max_grad_norm > 0,
                 "This mode needs a positive clipping norm (--max-grad-norm).")
            need(self.delta is not None and 0 < self.delta < 1, "This mode needs delta in (0, 1) (--delta).")
        else:
            need(self.noise_multiplier is None, "Mode F adds no noise; drop --noise-multiplier or use fpdp.")
        if self.secagg:
            need(self.threshold >= 2 and self.hospitals >= 2,
                 "Secure aggregation needs at least 2 hospitals and a threshold of at least 2.")
            need(self.threshold > self.colluders,
                 f"The threshold m = {self.threshold} must be above the colluding hospitals t = {self.colluders}.")
            need(2 * self.threshold > self.hospitals + self.colluders,
                 f"Secure aggregation needs 2m > K + t (m = {self.threshold}, K = {self.hospitals}, "
                 f"t = {self.colluders}); otherwise a lying coordinator can unmask one hospital. "
                 f"Use --threshold {(self.hospitals + self.colluders) // 2 + 1} or more.")

    @property
    def is_private(self) -> bool:
        return self.mode in ("fpdp", "fscdp")

    def to_dict(self) -> dict:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FederationPlan:
        plan = from_dict(cls, data)
        plan.validate()
        return plan

    # -- the privacy figures of this plan: every other place asks these -----------------------------

    def noise_std_per_hospital(self) -> float:
        """FSCDP: the noise each hospital adds, sigma * C / sqrt(m - t).

        Any released sum holds at least m noised vectors and a coordinator with t colluding hospitals
        knows at most t of their noises, so the noise unknown to it is at least N(0, sigma^2 C^2): the
        noise of centralized DP-SGD with multiplier sigma.
        """
        assert self.noise_multiplier is not None and self.max_grad_norm is not None  # validate(): FSCDP sets both
        return float(self.noise_multiplier) * float(self.max_grad_norm) / math.sqrt(self.threshold - self.colluders)

    def round_cost(self, num_images: int) -> tuple[float, float, int]:
        """(noise multiplier, sample rate, steps) one round charges a hospital with ``num_images``.

        FSCDP: one step at the plan's q. FPDP: every local DP-SGD step of E epochs, at the rate local
        training uses (1 / batches per epoch). F: nothing, (0, 0, 0).
        """
        if self.mode == "fscdp":
            assert self.noise_multiplier is not None and self.sample_rate is not None  # validate(): FSCDP sets both
            return float(self.noise_multiplier), float(self.sample_rate), 1
        if self.mode == "fpdp":
            from core.privacy.accountant import steps_per_epoch

            # validate(): FPDP sets all three.
            assert self.noise_multiplier is not None and self.batch_size is not None and self.local_epochs is not None

            per_epoch = steps_per_epoch(num_images, int(self.batch_size))
            return float(self.noise_multiplier), 1.0 / per_epoch, per_epoch * int(self.local_epochs)
        return 0.0, 0.0, 0

    def total_cost(self, num_images: int) -> tuple[float, float, int]:
        """(noise multiplier, sample rate, steps) of taking part in every round."""
        noise, rate, steps = self.round_cost(num_images)
        return noise, rate, steps * self.rounds

    def epsilon_cost(self, num_images: int, accountant: str | None = None, delta: float | None = None) -> float:
        """Epsilon of taking part in every round (0.0 for mode F, which protects nothing), at ``delta``
        (default the plan's; a hospital's ledger states everything at its own)."""
        noise, rate, steps = self.total_cost(num_images)
        if steps == 0:
            return 0.0
        from core.privacy.accountant import compute_epsilon

        delta = delta if delta is not None else self.delta
        assert delta is not None  # validate(): a private mode sets the plan's delta
        return compute_epsilon(sample_rate=rate, noise_multiplier=noise, steps=steps, delta=float(delta),
                               accountant=accountant or self.accountant)

    @property
    def hospital_ids(self) -> list[str]:
        return [f"h{index:02d}" for index in range(1, self.hospitals + 1)]

    def summary_lines(self) -> list[str]:
        lines = [
            f"Federation: {self.name} ({self.federation_id})",
            f"Mode: {MODE_NAMES[self.mode]}",
            f"Model: {self.model} at {self.image_size} px, {len(self.classes)} classes",
            f"Rounds: {self.rounds} (at most {self.max_attempts} attempts each); hospitals: {self.hospitals}"
            + (f" ({', '.join(self.hospital_names)})" if self.hospital_names else ""),
            f"Secure aggregation: {'yes' if self.secagg else 'no'}",
        ]
        if self.secagg:
            lines.append(f"Threshold m = {self.threshold}: a sum is only released over at least {self.threshold} "
                         f"hospitals, so up to {self.hospitals - self.threshold} may drop out of a round; "
                         f"colluding hospitals t = {self.colluders} (the rule 2m > K + t holds).")
        if self.mode == "fscdp":
            lines.append(f"One DP-SGD step per round: sample rate q = {self.sample_rate:g}, "
                         f"noise multiplier sigma = {self.noise_multiplier:g}, clipping C = {self.max_grad_norm:g}, "
                         f"each hospital adds noise std sigma*C/sqrt(m - t) = {self.noise_std_per_hospital():.4g}")
            lines.append(f"Server optimizer: {self.server_optimizer.upper()} lr {self.server_lr:g} "
                         f"({self.server_lr_schedule}), "
                         f"{'beta1' if self.server_optimizer == 'adam' else 'momentum'} {self.server_momentum:g}")
        else:
            lines.append(f"Local training per round: {self.local_epochs} epoch(s), batch {self.batch_size}, "
                         f"lr {self.lr:g}, momentum {self.momentum:g}")
            if self.mode == "fpdp":
                lines.append(f"Local DP-SGD: noise multiplier sigma = {self.noise_multiplier:g}, "
                             f"clipping C = {self.max_grad_norm:g}")
        if self.is_private:
            lines.append(f"Privacy accounting: {self.accountant.upper()}, delta = {self.delta:g}")
        lines.append(f"Threat model: {threat_model_text(self)}")
        lines.append(f"Model evaluation: {EVALUATION_NOTE}")
        return lines


def plan_hash(plan: FederationPlan) -> str:
    """SHA-256 (hex) of the plan's canonical JSON."""
    canonical = json.dumps(plan.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def save_plan(plan: FederationPlan, path: Path) -> None:
    plan.validate()
    save_toml(plan, path)


def load_plan(path: Path) -> FederationPlan:
    plan = load_toml(FederationPlan, path)
    plan.validate()
    return plan
