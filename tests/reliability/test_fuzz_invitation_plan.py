"""Fuzzing the two files a federation hands out: the invitation (JSON, core.federation.invitation) and the
plan (TOML, core.federation.plan.load_plan). Each field is set to values of every JSON/TOML type, keys
are dropped and added, and the bytes are mutated: the file is used, or refused with a FederationError /
ConfigError in one line."""

import json
import math
import tomllib
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st
from reliability_kit import corpus_params, fuzz_settings, mutate, run_case

from core.federation.invitation import read_invitation
from core.federation.layout import InitConfig, init_federation
from core.federation.plan import load_plan


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("invite")
    init = init_federation(InitConfig(folder=root / "fed", name="fuzz", mode="fscdp", rounds=3, hospitals=3,
                                      hosts=["127.0.0.1"], port=8443, image_size=32, sample_rate=0.5, delta=1e-3))
    invitation = sorted(init.invitations)[0].read_bytes()
    return {"root": root, "invitation": invitation, "plan": (root / "fed" / "plan.toml").read_bytes()}


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=16),
                  st.sampled_from(["https://127.0.0.1:8443", "http://x", "https://", "fscdp", "f", "fpdp", "rdp", "h01",
                                   "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "AAAA", ""]))
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=4), max_leaves=8)
# Numbers a plan's fields must survive: huge, negative, zero, not finite.
_number = st.sampled_from([0, -1, 1, 2, 3, 10**6, 2**63, 2**80, 0.5, 1e-300, 1e308, math.inf, -math.inf, math.nan, True])


def _edit(draw, data: dict, depth: int = 0) -> dict:
    data = dict(data)
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(("set", "set", "number", "drop", "add", "recurse")))
        key = draw(st.sampled_from(sorted(data))) if data else "x"
        if action == "set":
            data[key] = draw(_value)
        elif action == "number":
            data[key] = draw(_number)
        elif action == "drop":
            data.pop(key, None)
        elif action == "add":
            data[draw(st.text(max_size=10))] = draw(_value)
        elif action == "recurse" and isinstance(data.get(key), dict) and depth < 2:
            data[key] = _edit(draw, data[key], depth + 1)
    return data


@st.composite
def invitations(draw, seed: bytes) -> bytes:
    how = draw(st.sampled_from(("fields", "fields", "plan", "bytes")))
    if how == "bytes":
        return mutate(seed, draw)
    data = json.loads(seed)
    if how == "plan":
        data["plan"] = _edit(draw, data["plan"], 1)
    else:
        data = _edit(draw, data)
    return json.dumps(data, allow_nan=True).encode()


def _toml_safe(value):
    """TOML has no null: what tomli_w cannot write becomes a string."""
    if value is None:
        return "null"
    if isinstance(value, dict):
        return {k: _toml_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_toml_safe(v) for v in value if v is not None]
    if isinstance(value, int) and not isinstance(value, bool) and not -2**63 <= value < 2**63:
        return str(value)
    return value


@st.composite
def plans(draw, seed: bytes) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return mutate(seed, draw)
    data = _toml_safe(_edit(draw, tomllib.loads(seed.decode())))
    try:
        text = tomli_w.dumps(data)
    except (TypeError, ValueError):
        return seed
    return text.encode()


def check_invitation(root: Path, data: bytes):
    path = root / "fuzz.invite"
    path.write_bytes(data)
    return run_case("invitation", lambda: read_invitation(path), data=data, suffix=".invite")


def check_plan(root: Path, data: bytes):
    path = root / "plan.toml"
    path.write_bytes(data)
    return run_case("plan", lambda: load_plan(path), data=data, suffix=".toml")


def test_invitations_are_used_or_refused_in_one_line(federation):
    @fuzz_settings("invitation")
    @given(invitations(federation["invitation"]))
    def fuzz(data):
        check_invitation(federation["root"], data)

    fuzz()


def test_plans_are_used_or_refused_in_one_line(federation):
    @fuzz_settings("plan")
    @given(plans(federation["plan"]))
    def fuzz(data):
        check_plan(federation["root"], data)

    fuzz()


def test_the_seeds_are_valid(federation):
    assert check_invitation(federation["root"], federation["invitation"]).hospital_id == "h01"
    assert check_plan(federation["root"], federation["plan"]).hospitals == 3


@pytest.mark.parametrize("path", corpus_params("invitation"))
def test_the_invitation_corpus(federation, path):
    check_invitation(federation["root"], path.read_bytes())


@pytest.mark.parametrize("path", corpus_params("plan"))
def test_the_plan_corpus(federation, path):
    check_plan(federation["root"], path.read_bytes())
