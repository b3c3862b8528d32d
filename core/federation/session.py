"""A hospital's typed calls to its coordinator: the one place that speaks core.federation.protocol.

``CoordinatorSession`` wraps the signed, pinned HTTPS connection (core.federation.transport) and returns
protocol views, never loose dicts. The hospital client uses it for a membership; the app and the CLI use
it (through core.federation.client.status / peers / leave) to show a federation or leave it.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import FederationError
from core.federation.protocol import Peers, PublicStatus, RosterView, RoundSummary, Route, StateView, Step


class CoordinatorSession:
    def __init__(self, invitation, ca_file: Path, key, **connection) -> None:
        from core.federation.transport import CoordinatorConnection

        self.invitation = invitation
        self.net = CoordinatorConnection(invitation.coordinator_url, ca_file, federation_id=invitation.federation_id,
                                         hospital_id=invitation.hospital_id, key=key, **connection)

    @property
    def bytes_sent(self) -> int:
        return self.net.bytes_sent

    @bytes_sent.setter
    def bytes_sent(self, value: int) -> None:
        self.net.bytes_sent = value

    def close(self) -> None:
        self.net.close()

    def _post_json(self, path: str, data: dict, what: str, **kwargs) -> dict:
        return self.net.post_json(path, data, what=what, federation=self.invitation.federation_id, **kwargs)

    # -- reading ----------------------------------------------------------------------------------

    def state(self, *, since: str, wait: float) -> StateView:
        # The coordinator answers within ``wait``; silence past that and the connection's read timeout is a dead link.
        return StateView.from_dict(self.net.get_json(Route.STATE, params={"since": since, "wait": wait},
                                                     read_timeout_s=wait + self.net.timeout[1]))

    def plan_hash(self) -> str:
        return str(self.net.get_json(Route.PLAN).get("plan_hash", ""))

    def roster(self) -> RosterView:
        return RosterView.from_dict(self.net.get_json(Route.ROSTER))

    def status(self) -> PublicStatus:
        return PublicStatus.from_dict(self.net.get_json(Route.STATUS))

    def peers(self) -> Peers:
        return Peers.from_dict(self.net.get_json(Route.HOSPITALS))

    def round_result(self, round: int) -> RoundSummary:
        return RoundSummary.from_dict(self.net.get_json(Route.round_result(round)))

    def answer(self, round: int, attempt: int, step: Step) -> bytes:
        """The coordinator's answer to ``step`` (a secure-aggregation message, bytes)."""
        return self.net.request("GET", Route.step(round, attempt, step)).content

    def model(self, round: int) -> bytes:
        return self.net.request("GET", Route.model(round)).content

    def presence(self, wait: float) -> None:
        self.net.request("GET", Route.PRESENCE, params={"wait": wait})

    # -- sending ----------------------------------------------------------------------------------

    def enroll(self, public_key: bytes, num_images: int) -> dict:
        import base64

        answer = self._post_json(Route.ENROLL, {
            "token": self.invitation.token, "hospital_id": self.invitation.hospital_id,
            "public_key": base64.b64encode(public_key).decode(), "num_images": num_images,
        }, "enrollment (token, public identity key, image count)")
        if not isinstance(answer.get("plan_hash"), str):
            raise FederationError("The coordinator's enrollment answer has no plan hash; not taking part.")
        return answer

    def sign_roster(self, digest: str, signature: bytes) -> None:
        import base64

        self._post_json(Route.ROSTER_SIGNATURE, {"digest": digest, "signature": base64.b64encode(signature).decode()},
                        "signature on the federation roster")

    def send_step(self, round: int, attempt: int, step: Step, body: bytes, what: str, ledger_key: str = "") -> None:
        self.net.request("POST", Route.step(round, attempt, step), body=body, what=what, round=round, phase=step,
                         accept_duplicate=True, federation=self.invitation.federation_id, ledger_key=ledger_key)

    def leave_round(self, round: int, attempt: int, step: str, why: str) -> None:
        self.net.request("POST", Route.leave_round(round, attempt), body=b"{}", what=why, round=round, phase=step,
                         content_type="application/json", federation=self.invitation.federation_id)

    def decline(self, round: int, reason: str) -> None:
        self._post_json(Route.DECLINE, {"reason": reason}, "declining further rounds", round=round)

    def leave(self, reason: str) -> None:
        self._post_json(Route.LEAVE, {"reason": reason}, "leaving the federation")
