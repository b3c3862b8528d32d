"""Fuzzing what a hospital reads from its coordinator's JSON answers (core.federation.protocol views, the
round's secure-aggregation parameters, the roster): each is taken as sent or refused with one line."""

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from reliability_kit import corpus_params, fuzz_settings, run_case

from core.federation.protocol import PeerInfo, Peers, PublicStatus, RosterView, RoundSummary, StateView
from core.federation.roster import FederationRoster
from core.secagg import RoundParams, fixed_point_for_bound

KEY = base64.b64encode(bytes(range(32))).decode()
SUMMARY = RoundSummary(round=1, attempts=1, seconds=2.5, included=["h01", "h02"], images=40, metrics={"accuracy": 0.5},
                       model_file="global-r0001.dpm", model_sha256="ab" * 32)
PEER = PeerInfo(hospital_id="h01", name="One", fingerprint="abcd", public_key=bytes(range(32)), num_images=20,
                status="active", rounds_included=1)
PARAMS = RoundParams("fed:1:1", 2, 10, fixed_point_for_bound(1.0, 3), colluders=1)
ROSTER = {"federation_id": "0123456789abcdef", "plan_hash": "ab" * 32,
          "entries": [{"hospital_id": f"h0{i}", "name": f"H{i}", "num_images": 10 * i,
                       "public_key": base64.b64encode(bytes([i]) * 32).decode()} for i in (1, 2, 3)]}
GENUINE = {
    "StateView": (StateView.from_dict, StateView(
        status="running", stop_reason="", round=1, rounds=3, attempt=1, phase="mask", deadline=12.5, participant=True,
        submitted=False, in_round=True, model_round=0, secagg=PARAMS.to_dict(), version="1", hospital_status="active",
        max_images=40, last_round=SUMMARY, etag="x").to_dict()),
    "PublicStatus": (PublicStatus.from_dict, PublicStatus(
        federation_id="0123456789abcdef", name="f", mode="fscdp", status="running", stop_reason="", round=1, rounds=3,
        phase="mask", model_round=0, invitations=3, hospitals=[PEER], roster_code="12-34", roster_signed=["h01"],
        last_round=SUMMARY).to_dict()),
    "Peers": (Peers.from_dict, Peers([PEER, PEER]).to_dict()),
    "RosterView": (RosterView.from_dict, RosterView(status="confirming", roster=ROSTER, digest="ab" * 32,
                                                    signatures={"h01": KEY}).to_dict()),
    "RoundSummary": (RoundSummary.from_dict, SUMMARY.to_dict()),
    "RoundParams": (RoundParams.from_dict, PARAMS.to_dict()),
    "FederationRoster": (FederationRoster.from_dict, ROSTER),
}

_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
                  st.sampled_from([KEY, "AAAA", "h01", "", "mask", "advertise", "fed:1:1", 2**31, 2**64]))
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                          max_size=4), max_leaves=10)


def _edit(draw, data, depth=0):
    if not isinstance(data, dict | list) or not data:
        return draw(_value)
    data = dict(data) if isinstance(data, dict) else list(data)
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        key = draw(st.sampled_from(sorted(data))) if isinstance(data, dict) else draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(("set", "recurse", "recurse", "drop", "add")))
        if action == "recurse" and depth < 3:
            data[key] = _edit(draw, data[key], depth + 1)
        elif action == "drop" and isinstance(data, dict):
            data.pop(key)
        elif action == "add" and isinstance(data, dict):
            data[draw(st.text(max_size=6))] = draw(_value)
        else:
            data[key] = draw(_value)
    return data


@fuzz_settings("views")
@given(st.data())
def test_coordinator_answers_are_taken_or_refused_in_one_line(data):
    name = data.draw(st.sampled_from(sorted(GENUINE)))
    parse, genuine = GENUINE[name]
    edited = _edit(data.draw, json.loads(json.dumps(genuine)))
    text = json.dumps(edited, allow_nan=True).encode()
    run_case("views", lambda: parse(edited), data=name.encode() + b"\n" + text, suffix=".json")


def test_the_genuine_views_are_taken():
    for name, (parse, genuine) in GENUINE.items():
        assert run_case("views", lambda p=parse, g=genuine: p(g)) is not None, name


@pytest.mark.parametrize("path", corpus_params("views"))
def test_the_views_corpus(path):
    """Each file: the parser's name on the first line, then the JSON it is given."""
    name, _, text = path.read_bytes().partition(b"\n")
    parse, _ = GENUINE[name.decode()]
    run_case("views", lambda: parse(json.loads(text)), data=path.read_bytes(), suffix=".json")
