"""When the coordinator moves on: a pure state machine over the persisted RoundState.

``RoundMachine.next_action(state, seen)`` looks at the state and at what the coordinator observes now
(``Observation``: who enrolled, who is active or gone, who answered the open step, the clock) and
returns the one thing to do next, or None to wait. It does no I/O and reads no clock of its own, so
it is tested with a fake clock (tests/core/federation/test_round_machine.py); the Coordinator carries
the actions out (closing a step runs secure aggregation, finishing a round publishes a model).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.federation.layout import CoordinatorSettings
from core.federation.plan import FederationPlan
from core.federation.protocol import Status, Step, steps_for
from core.federation.round_state import RoundState


@dataclass(frozen=True)
class Observation:
    now: float
    serving_since: float
    enrolled: int
    active: frozenset[str]  # hospitals taking part (not declined or left)
    gone: frozenset[str]  # hospitals whose connection dropped or that went silent
    expected: frozenset[str]  # hospitals the open step waits for
    submitted: frozenset[str]  # hospitals whose message for the open step arrived
    left: frozenset[str]  # hospitals that gave up the open attempt
    roster_signed: bool  # every hospital of the frozen roster signed it
    held: bool = False  # the lead site paused the federation (core.federation.service): no attempt goes past step 1


@dataclass(frozen=True)
class FreezeRoster:
    """Enrollment is over: freeze the roster and wait for the hospitals' signatures."""


@dataclass(frozen=True)
class OpenAttempt:
    round: int
    attempt: int
    first: bool  # the round's first attempt (its clock starts)


@dataclass(frozen=True)
class CloseStep:
    step: Step


@dataclass(frozen=True)
class StopFederation:
    reason: str


Action = FreezeRoster | OpenAttempt | CloseStep | StopFederation


class RoundMachine:
    def __init__(self, plan: FederationPlan, settings: CoordinatorSettings) -> None:
        self.plan = plan
        self.settings = settings
        self.steps = steps_for(plan.secagg)

    def next_action(self, state: RoundState, seen: Observation) -> Action | None:
        plan = self.plan
        if state.status == Status.ENROLLING:
            timeout = self.settings.start_timeout_s
            everyone = seen.enrolled >= plan.hospitals
            enough = (timeout is not None and seen.now - seen.serving_since >= timeout
                      and seen.enrolled >= plan.threshold)
            if not (everyone or enough):
                return None
            return FreezeRoster() if plan.secagg else self.first_attempt(state)
        if state.status == Status.CONFIRMING:
            return self.first_attempt(state) if seen.roster_signed else None
        if state.status != Status.RUNNING:
            return None
        if len(seen.active) < plan.threshold:
            return StopFederation(f"only {len(seen.active)} hospitals remain, fewer than the threshold {plan.threshold}")
        step = Step(state.phase)
        if seen.held and step == self.steps[0]:
            # Paused between rounds: the open attempt's first step (round keys, nothing noised or charged)
            # stays open, whatever its clock says, until the lead site resumes.
            return None
        waiting = (seen.expected - seen.submitted - seen.left) & (seen.active - seen.gone)
        if seen.now < state.phase_deadline and (waiting or (step == self.steps[0] and self._short(seen))):
            return None
        return CloseStep(step)

    def _short(self, seen: Observation) -> bool:
        """The first step has fewer messages than the threshold while hospitals of the roster that could
        still join (restarted after a crash: step 1 takes anyone active) have not: closing now would only
        abort the attempt, and a few quick aborts would use up the round's attempts before they are back."""
        return len(seen.submitted) < self.plan.threshold and bool(seen.active - seen.submitted - seen.left)

    def first_attempt(self, state: RoundState) -> OpenAttempt:
        return OpenAttempt(round=state.model_round + 1, attempt=1, first=True)

    def after_abort(self, state: RoundState, reason: str) -> Action:
        """An attempt ended without a release: the next attempt, or stop after the plan's last one."""
        if state.attempt >= self.plan.max_attempts:
            return StopFederation(f"round {state.round} failed {state.attempt} times (last: {reason})")
        return OpenAttempt(round=state.round, attempt=state.attempt + 1, first=False)

    def after_round(self, state: RoundState) -> OpenAttempt | None:
        """A round was released (state.model_round is that round): the next one, or None at the plan's end."""
        if state.model_round >= self.plan.rounds:
            return None
        return OpenAttempt(round=state.model_round + 1, attempt=1, first=True)

    def next_step(self, step: Step) -> Step:
        return self.steps[self.steps.index(step) + 1]

    def is_last(self, step: Step) -> bool:
        return step == self.steps[-1]

    def phase_timeout(self, step: Step) -> float:
        settings = self.settings
        return settings.compute_phase_timeout_s if step in (Step.MASK, Step.UPDATE) else settings.key_phase_timeout_s
