"""The coordinator's round machine, without processes, sockets or a clock: a fake clock and observations."""

import pytest

from core.federation.layout import CoordinatorSettings
from core.federation.plan import FederationPlan
from core.federation.protocol import Status, Step
from core.federation.round_machine import (
    CloseStep,
    FreezeRoster,
    Observation,
    OpenAttempt,
    RoundMachine,
    StopFederation,
)
from core.federation.round_state import RoundState

NOW = 1_000.0


def plan(**values) -> FederationPlan:
    fields = dict(name="t", federation_id="f1", mode="fscdp", rounds=3, hospitals=4, threshold=3, colluders=1,
                  secagg=True, sample_rate=0.1, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5, max_attempts=2)
    fields.update(values)
    result = FederationPlan(**fields)
    result.validate()
    return result


def machine(**plan_values) -> RoundMachine:
    settings = CoordinatorSettings(url="https://x:1", hosts=["x"], port=1, key_phase_timeout_s=60.0,
                                   compute_phase_timeout_s=600.0, start_timeout_s=None)
    return RoundMachine(plan(**plan_values), settings)


def seen(*, now=NOW, enrolled=4, active=("h01", "h02", "h03", "h04"), gone=(), expected=(), submitted=(), left=(),
         roster_signed=False) -> Observation:
    return Observation(now=now, serving_since=0.0, enrolled=enrolled, active=frozenset(active), gone=frozenset(gone),
                       expected=frozenset(expected), submitted=frozenset(submitted), left=frozenset(left),
                       roster_signed=roster_signed)


def running(step: Step, deadline: float = NOW + 30, **values) -> RoundState:
    return RoundState(status=Status.RUNNING, round=1, attempt=1, phase=step.value, phase_deadline=deadline, **values)


def test_enrollment_then_the_roster_then_round_one():
    m = machine()
    state = RoundState()
    assert m.next_action(state, seen(enrolled=3)) is None  # not everyone yet, and no start timeout
    assert m.next_action(state, seen(enrolled=4)) == FreezeRoster()
    state.status = Status.CONFIRMING
    assert m.next_action(state, seen(roster_signed=False)) is None  # no round before every signature
    assert m.next_action(state, seen(roster_signed=True)) == OpenAttempt(round=1, attempt=1, first=True)


def test_without_secure_aggregation_round_one_opens_right_after_enrollment():
    m = machine(mode="f", secagg=False, sample_rate=None, noise_multiplier=None, max_grad_norm=None, delta=None,
                batch_size=8, local_epochs=1)
    assert m.next_action(RoundState(), seen()) == OpenAttempt(round=1, attempt=1, first=True)


def test_a_step_waits_for_everyone_expected_until_its_deadline():
    m = machine()
    everyone = ("h01", "h02", "h03", "h04")
    state = running(Step.SHARE)
    assert m.next_action(state, seen(expected=everyone, submitted=everyone[:3])) is None
    assert m.next_action(state, seen(expected=everyone, submitted=everyone)) == CloseStep(Step.SHARE)
    # The deadline passes: go on with whoever answered.
    assert m.next_action(state, seen(now=NOW + 31, expected=everyone, submitted=everyone[:3])) == CloseStep(Step.SHARE)


def test_gone_and_left_hospitals_are_not_waited_for():
    m = machine()
    everyone = ("h01", "h02", "h03", "h04")
    state = running(Step.MASK)
    assert m.next_action(state, seen(expected=everyone, submitted=everyone[:3], gone=("h04",))) == CloseStep(Step.MASK)
    assert m.next_action(state, seen(expected=everyone, submitted=everyone[:3], left=("h04",))) == CloseStep(Step.MASK)


def test_the_first_step_waits_for_a_first_message_until_its_deadline():
    m = machine()
    state = running(Step.ADVERTISE, expected=["h01", "h02", "h03", "h04"])
    assert m.next_action(state, seen(expected=(), submitted=())) is None
    assert m.next_action(state, seen(now=NOW + 31, expected=(), submitted=())) == CloseStep(Step.ADVERTISE)


def test_the_first_step_waits_for_hospitals_coming_back_while_below_the_threshold():
    # Two of four hospitals crashed and are restarting: the attempt opened expecting only h01 and h04. Both
    # advertised; closing now would abort at once (2 < m = 3), and the next attempts too, before the two
    # are back (the kill matrix's "m - 1 hospitals" cell used up 5 attempts in 0.1 s this way).
    m = machine()
    state = running(Step.ADVERTISE, expected=["h01", "h04"])
    assert m.next_action(state, seen(expected=("h01", "h04"), submitted=("h01", "h04"), gone=("h02", "h03"))) is None
    back = seen(expected=("h01", "h04"), submitted=("h01", "h02", "h04"))
    assert m.next_action(state, back) == CloseStep(Step.ADVERTISE)  # h02 is back: m messages, go on
    assert m.next_action(state, seen(now=NOW + 31, expected=("h01", "h04"), submitted=("h01", "h04"))) == \
        CloseStep(Step.ADVERTISE)  # the deadline passes: close (and abort) with whoever answered
    # Hospitals that left the attempt are not waited for.
    left = seen(expected=("h01", "h04"), submitted=("h01", "h04"), left=("h02", "h03"))
    assert m.next_action(state, left) == CloseStep(Step.ADVERTISE)


def test_too_few_active_hospitals_stop_the_federation():
    m = machine()
    action = m.next_action(running(Step.SHARE), seen(active=("h01", "h02")))
    assert isinstance(action, StopFederation) and "fewer than the threshold 3" in action.reason


def test_an_aborted_attempt_is_retried_up_to_the_plans_attempts():
    m = machine()
    first = RoundState(status=Status.RUNNING, round=2, attempt=1)
    assert m.after_abort(first, "x") == OpenAttempt(round=2, attempt=2, first=False)
    last = RoundState(status=Status.RUNNING, round=2, attempt=2)
    action = m.after_abort(last, "too few")
    assert isinstance(action, StopFederation) and "round 2 failed 2 times" in action.reason


def test_after_a_round_the_next_one_until_the_plan_ends():
    m = machine()
    assert m.after_round(RoundState(model_round=1)) == OpenAttempt(round=2, attempt=1, first=True)
    assert m.after_round(RoundState(model_round=3)) is None


@pytest.mark.parametrize(("step", "following"), [(Step.ADVERTISE, Step.SHARE), (Step.SHARE, Step.MASK),
                                                 (Step.MASK, Step.CONSISTENCY), (Step.CONSISTENCY, Step.UNMASK)])
def test_the_secure_aggregation_steps_follow_each_other(step, following):
    m = machine()
    assert m.next_step(step) == following and not m.is_last(step)
    assert m.is_last(Step.UNMASK)
    assert m.phase_timeout(Step.MASK) == 600.0 and m.phase_timeout(Step.SHARE) == 60.0


def test_the_persisted_state_refuses_unknown_entries():
    from core.errors import FederationError

    state = RoundState.from_meta({"status": "running", "round": 2})
    assert state.round == 2 and state.model_round == 0
    with pytest.raises(FederationError, match="unknown entries"):
        RoundState.from_meta({"status": "running", "rounnd": 2})
    with pytest.raises(AttributeError):
        state.changes(phse="x")
