"""How a round's messages become one aggregate, per mode (in the spirit of Flower's Strategy).

``SecureAggregation`` (FSCDP, and F/FPDP with secure aggregation) feeds every step into the secure-
aggregation state machine, which sums masked inputs as they arrive and releases only the sum over at
least m hospitals; ``PlainAggregation`` (F/FPDP without it) averages the stored updates one at a time,
weighted by declared image counts. Both stream: memory does not grow with the number of hospitals.
``server_gradient`` turns an aggregate into what the coordinator's optimizer steps on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from core.errors import FederationError, Refused, RoundAborted, SecAggError
from core.federation.plan import FederationPlan
from core.federation.protocol import Step

if TYPE_CHECKING:
    from core.secagg import Message, RoundParams


@dataclass(frozen=True)
class Aggregate:
    included: list[str]  # hospitals whose update is in it, sorted
    values: np.ndarray  # float64, the layout's length
    averaged: bool  # already divided by the included hospitals' image counts (plain FedAvg)


class SecureAggregation:
    """One round attempt's secure aggregation (core.secagg.SecAggServer) behind the round steps."""

    def __init__(self, params: RoundParams, peer_keys: Mapping[str, bytes]) -> None:
        from core.secagg import SecAggServer

        self.server = SecAggServer(params, peer_keys)

    def receive(self, step: Step, sender: str, body: bytes) -> None:
        """Parse and accept one hospital's message (Refused, with the HTTP status and the reason, if not)."""
        from core.secagg import AdvertiseKeys, EncryptedShares, MaskedInput, SurvivorSignature, UnmaskResponse

        server = self.server
        # Each step's receiver takes that step's message class (Any: the pairing is by construction).
        handlers: dict[Step, tuple[type[Message], Callable[[Any], None]]] = {
            Step.ADVERTISE: (AdvertiseKeys, server.receive_advertise),
            Step.SHARE: (EncryptedShares, server.receive_shares),
            Step.MASK: (MaskedInput, server.receive_masked_input),
            Step.CONSISTENCY: (SurvivorSignature, server.receive_survivor_signature),
            Step.UNMASK: (UnmaskResponse, server.receive_unmask),
        }
        cls, receive = handlers[step]
        try:
            message = cls.from_bytes(body)
        except SecAggError as exc:
            raise Refused(400, f"Malformed {step} message: {exc}") from exc
        if message.sender != sender:
            raise Refused(403, f"The {step} message claims to come from {message.sender!r}, not from this hospital.")
        try:
            receive(message)
        except SecAggError as exc:
            raise Refused(400, f"The {step} message was refused: {exc}") from exc

    def expected(self, step: Step) -> frozenset[str]:
        """Who the step after the first waits for: those who took the step before it."""
        server = self.server
        return {Step.SHARE: server.advertised, Step.MASK: server.shared, Step.CONSISTENCY: server.masked,
                Step.UNMASK: server.signed}[step]

    def close(self, step: Step) -> dict[str, bytes]:
        """The coordinator's answer to a step: "*" for everyone, else one per hospital (SecAggAborted)."""
        server = self.server
        if step == Step.ADVERTISE:
            return {"*": server.close_advertise().to_bytes()}
        if step == Step.SHARE:
            return {h: bundle.to_bytes() for h, bundle in server.close_sharing().items()}
        if step == Step.MASK:
            return {"*": server.close_masking().to_bytes()}
        if step == Step.CONSISTENCY:
            return {"*": server.close_consistency().to_bytes()}
        raise ValueError(f"step {step} has no answer")

    def finish(self) -> Aggregate:
        result = self.server.finish()
        return Aggregate(sorted(result.included), np.asarray(result.values, dtype=np.float64), averaged=False)

    def abort(self) -> None:
        self.server.abort()


class PlainAggregation:
    """FedAvg of plain model updates: read back from the store one at a time, weighted by image counts."""

    def __init__(self, layout, threshold: int) -> None:
        self.layout = layout
        self.threshold = threshold

    def receive(self, step: Step, sender: str, body: bytes) -> None:
        from core.federation.weights import arrays_from_bytes

        try:
            arrays_from_bytes(body, expected=self.layout.shapes, what="model update")
        except FederationError as exc:
            raise Refused(400, str(exc)) from exc

    def finish_from(self, updates: Iterable[tuple[str, bytes]], num_images: Mapping[str, int]) -> Aggregate:
        from core.federation.weights import arrays_from_bytes

        total = np.zeros(self.layout.length, dtype=np.float64)
        weight, senders = 0.0, []
        for sender, body in updates:
            delta = self.layout.flatten(arrays_from_bytes(body, expected=self.layout.shapes, what="model update"))
            total += num_images[sender] * delta
            weight += num_images[sender]
            senders.append(sender)
        if len(senders) < self.threshold:
            raise RoundAborted(f"only {len(senders)} updates arrived, fewer than the threshold {self.threshold}")
        return Aggregate(sorted(senders), total / weight, averaged=True)

    def abort(self) -> None:
        pass


def server_gradient(plan: FederationPlan, aggregate: Aggregate, num_images: Mapping[str, int],
                    max_images: int) -> np.ndarray:
    """What the coordinator's optimizer steps on (it minimises, so model deltas enter negated)."""
    if plan.mode == "fscdp":
        # The noisy sum of clipped per-example gradients over the union's Poisson sample, divided by the
        # expected batch size: the centralized DP-SGD gradient estimate.
        images = sum(num_images[h] for h in aggregate.included)
        assert plan.sample_rate is not None  # validate(): FSCDP sets it
        return aggregate.values / (float(plan.sample_rate) * images)
    if aggregate.averaged:
        return -aggregate.values
    # F/FPDP with secure aggregation: hospital k sent (n_k / n_max) * delta_k (core.federation.client).
    weights = sum(num_images[h] / max(1, max_images) for h in aggregate.included)
    return -aggregate.values / weights
