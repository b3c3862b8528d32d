"""The typed protocol views: what the coordinator sends round-trips, and anything else is refused clearly."""

import json

import pytest

from core.errors import FederationError
from core.federation.protocol import PeerInfo, Peers, PublicStatus, RoundSummary, Route, StateView, Step


def state_view(**values) -> StateView:
    fields = dict(status="running", stop_reason="", round=2, rounds=5, attempt=1, phase="mask", deadline=12.5,
                  participant=True, submitted=False, in_round=True, model_round=1, secagg={"threshold": 3},
                  version="b:7", hospital_status="active", max_images=40,
                  last_round=RoundSummary(1, 1, 0.5, ["h01", "h02"], 80, {"accuracy": 0.5}, "global-r0001.dpm", "ab"))
    fields.update(values)
    return StateView(**fields)


def test_views_round_trip_through_json():
    view = state_view()
    again = StateView.from_dict(json.loads(json.dumps(view.to_dict())))
    assert again == view and again.step == Step.MASK
    peers = Peers([PeerInfo("h01", "A", "ab cd", b"\x01" * 32, 40, "active", 2)])
    assert Peers.from_dict(json.loads(json.dumps(peers.to_dict()))) == peers
    status = PublicStatus("f", "n", "fscdp", "running", "", 1, 3, "mask", 0, 3, peers.hospitals, "abcd", ["h01"], None)
    assert PublicStatus.from_dict(json.loads(json.dumps(status.to_dict()))) == status


def test_the_etag_ignores_only_the_version():
    assert state_view(version="x:1").stable_etag() == state_view(version="y:9").stable_etag()
    assert state_view().stable_etag() != state_view(submitted=True).stable_etag()


@pytest.mark.parametrize("change", [
    lambda d: d.pop("round"),
    lambda d: d.update(surprise=1),
    lambda d: d.update(round="2"),
    lambda d: d.update(participant=1),
    lambda d: d.update(last_round={"round": 1}),
    lambda d: d.update(deadline=True),
])
def test_malformed_views_are_refused_with_one_clear_error(change):
    data = state_view().to_dict()
    change(data)
    with pytest.raises(FederationError, match="malformed StateView|malformed RoundSummary"):
        StateView.from_dict(data)


def test_a_peer_key_must_be_base64():
    data = Peers([PeerInfo("h01", "A", "ab", b"\x01" * 32, 4, "active")]).to_dict()
    data["hospitals"][0]["public_key"] = "not base64!"
    with pytest.raises(FederationError, match="malformed PeerInfo"):
        Peers.from_dict(data)


def test_routes_are_built_in_one_place():
    assert Route.step(3, 2, Step.CONSISTENCY) == "/v1/rounds/3/2/consistency"
    assert Route.model(4) == "/v1/models/4.dpm" and Route.leave_round(1, 1) == "/v1/rounds/1/1/leave"
    assert Route.STEP.format(round=3, attempt=2, step="mask") == Route.step(3, 2, Step.MASK)
