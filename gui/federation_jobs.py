"""Worker-thread jobs for the Federation page: review an invitation, run the client, ask the coordinator.

``review_invitation`` reads the invitation and works out, before joining, what taking part costs this
hospital against its ledger. ``join`` runs core.federation.client.run in the hospital home (its one
ledger, audit log and identity key). ``coordinator_view`` asks the coordinator (a signed GET: nothing of
the hospital's is sent) for the round, phase, participants and the enrolled hospitals' identity keys,
whose fingerprints are computed here from the keys for out-of-band comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gui.ledger_jobs import LedgerSnapshot, PlanVerdict, check_plan, read_ledger


@dataclass
class InvitationReview:
    path: Path
    invitation: Any  # core.federation.invitation.Invitation
    workdir: Path  # this hospital's folder for the federation, inside its home
    resumable: bool  # this hospital already started in this federation (join resumes it)
    ledger: LedgerSnapshot
    num_images: int | None
    accountant: str
    epsilon_cost: float | None  # the whole plan, for this hospital; None when it needs the image count
    verdict: PlanVerdict | None  # the ledger before/after, against the cap
    problem: str = ""  # why joining is not possible yet, in words (the first of them)
    needs_cap: bool = False  # the plan is private and the ledger has no cap: set one first (the page offers it)
    classes: list[str] | None = None  # the classes of this hospital's checked images, when known

    @property
    def private(self) -> bool:
        return self.invitation.plan.is_private


def review_invitation(path: Path, *, num_images: int | None, home: Any,
                      classes: list[str] | None = None) -> InvitationReview:
    """``home``: the hospital home (core.home.HospitalHome); ``classes``: those of the images checked on the
    Data page (joining refuses images of other classes than the plan's)."""
    from core.data.validation import class_mismatch
    from core.federation.client import membership_folder
    from core.federation.invitation import read_invitation

    invitation = read_invitation(Path(path))
    plan = invitation.plan
    ledger_path = home.ledger
    ledger = read_ledger(ledger_path)
    accountant = ledger.accountant if ledger.exists else plan.accountant
    workdir = membership_folder(home, invitation)
    resumable = (workdir / "state.json").exists()
    review = InvitationReview(Path(path), invitation, workdir, resumable, ledger, num_images, accountant,
                              None, None, classes=list(classes) if classes is not None else None)
    problems = []
    if num_images is None:
        problems.append("Check this hospital's images on the Data page first: the federation trains on them.")
    elif classes is not None and class_mismatch(classes, list(plan.classes)):
        problems.append(class_mismatch(classes, list(plan.classes), f"the plan of {invitation.federation_name}")
                        + " Joining is refused until the Data page shows such a folder.")
    if plan.is_private and ledger.max_epsilon is None:
        review.needs_cap = True
        problems.append("This federation uses differential privacy: set this hospital's privacy cap first "
                        "(below).")
    review.problem = problems[0] if problems else ""
    if not plan.is_private:
        review.epsilon_cost = 0.0
        return review
    if plan.mode == "fpdp" and num_images is None:
        return review
    count = num_images or 1  # FSCDP's cost does not depend on the image count
    review.epsilon_cost = plan.epsilon_cost(count, accountant, delta=ledger.delta)
    noise, rate, steps = plan.total_cost(count)
    review.verdict = check_plan(ledger_path, noise_multiplier=noise, sample_rate=rate, steps=steps,
                                delta=plan.delta, accountant=accountant)
    return review


def join(review: InvitationReview, *, data: Path, home: Path, threads: int, accept_roster: str | None,
         progress, cancel, on_event, device: str = "auto") -> Any:
    """Take part (or resume taking part) in the federation, in a child process; returns core's JoinResult.

    The arguments are core.federation.client.JoinConfig's (see gui.child_jobs for why a child process):
    the ledger's own cap limits the run; ``accept_roster`` is the roster code the user confirmed.
    """
    from gui.child_jobs import run_child

    config = {"invitation": str(review.path), "data": str(data), "home": str(home),
              "accept_roster": accept_roster, "accountant": review.accountant, "threads": threads,
              "device": device}
    return run_child("join", {"config": config}, progress=progress, cancel=cancel, on_event=on_event)


@dataclass
class Peer:
    hospital_id: str
    name: str
    status: str
    fingerprint: str  # computed here from the public key the coordinator serves
    coordinator_agrees: bool  # the coordinator's own fingerprint string matches
    rounds_included: int | None
    is_this_hospital: bool


@dataclass
class CoordinatorView:
    status: str
    round: int
    rounds: int
    phase: str
    model_round: int
    last_included: list[str] = field(default_factory=list)
    last_metrics: dict = field(default_factory=dict)
    peers: list[Peer] = field(default_factory=list)


def coordinator_view(invitation_path: Path, home: Any, *, cancel) -> CoordinatorView:
    """The coordinator's public status and the enrolled hospitals, through core.federation.client (the app
    sends no request of its own). Fingerprints are computed here from the keys, for a phone call."""
    from core.federation.client import status
    from core.federation.invitation import read_invitation
    from core.signing import fingerprint

    invitation = read_invitation(Path(invitation_path))
    summary = status(invitation, home, cancel=cancel)
    peers = []
    for peer in summary.hospitals:
        computed = fingerprint(peer.public_key)
        peers.append(Peer(peer.hospital_id, peer.name, peer.status, computed, computed == peer.fingerprint,
                          peer.rounds_included, peer.hospital_id == invitation.hospital_id))
    last = summary.last_round
    return CoordinatorView(status=summary.status, round=summary.round, rounds=summary.rounds, phase=summary.phase,
                           model_round=summary.model_round, last_included=list(last.included) if last else [],
                           last_metrics=dict(last.metrics) if last else {}, peers=peers)


def leave_federation(invitation_path: Path, home: Any, *, cancel) -> None:
    """Tell the coordinator this hospital takes part in no further rounds (core.federation.client.leave)."""
    from core.federation.client import leave
    from core.federation.invitation import read_invitation

    leave(read_invitation(Path(invitation_path)), home, "its people chose to leave (the app)", cancel=cancel)
