"""Fuzzing every request body the coordinator accepts (core.federation.app), signed as a hospital signs
them so that each body reaches its parser: enrollment, the roster signature, each round step's binary
message, leaving a round, declining and leaving; the authentication headers themselves; the plain
model update (F/FPDP) the coordinator parses. The answer is 2xx or 4xx with a one-line reason, never 5xx.

A 4xx becomes a RequestFailure, as in the hospital client, so the harness checks its one-line message.
"""

import base64
import json

import numpy as np
import pytest
from coordinator_kit import LiveFederation
from hypothesis import given
from hypothesis import strategies as st
from reliability_kit import corpus_params, fuzz_settings, mutate, run_case

from core.errors import RequestFailure

pytestmark = pytest.mark.slow  # a coordinator (threads, SQLite), though no sockets


def answer(response):
    """The response as the hospital client sees it: the JSON, or a RequestFailure; a 5xx fails the case."""
    assert response.status_code < 500, f"{response.status_code} from the coordinator: {response.text[:300]}"
    if response.status_code >= 400:
        try:
            detail = response.json()["detail"]
        except (ValueError, KeyError) as exc:
            raise AssertionError(f"{response.status_code} without a JSON detail: {response.text[:200]!r}") from exc
        if not isinstance(detail, str):  # FastAPI's own 422: a list of problems
            detail = json.dumps(detail)[:300]
        raise RequestFailure(response.status_code, detail)
    return response


@pytest.fixture(scope="module")
def enrolling(tmp_path_factory):
    federation = LiveFederation(tmp_path_factory.mktemp("http-enrolling")).start()
    yield federation
    federation.stop()


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    federation = LiveFederation(tmp_path_factory.mktemp("http-running")).start()
    view = federation.bring_to_round()
    yield federation, view
    federation.stop()


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=16),
                  st.sampled_from(["h01", "h02", "h04", "", "AAAA", "x" * 70, "\u0000", "ab" * 32]))
_json = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                         max_size=4), max_leaves=8)


def _json_body(draw, genuine: dict) -> bytes:
    """``genuine`` with fields set, dropped or added; or not JSON at all."""
    kind = draw(st.sampled_from(("edit", "edit", "edit", "other-json", "bytes")))
    if kind == "bytes":
        return mutate(json.dumps(genuine).encode(), draw)
    if kind == "other-json":
        return json.dumps(draw(_json), allow_nan=True).encode()
    data = dict(genuine)
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(data) + ["extra"]))
        if draw(st.integers(0, 3)) == 0:
            data.pop(key, None)
        else:
            data[key] = draw(_json)
    return json.dumps(data, allow_nan=True).encode()


def test_enrollment_bodies(enrolling):
    federation = enrolling

    @fuzz_settings("http", share=0.25)
    @given(st.data())
    def fuzz(data):
        hospital = data.draw(st.sampled_from(federation.hospitals))
        body = _json_body(data.draw, json.loads(hospital.enrollment()))
        # Signed with the hospital's key: only a body naming that key passes the proof of possession.
        run_case("http", lambda: answer(federation.request("POST", "/v1/enroll", body, hospital=hospital)),
                 data=b"POST /v1/enroll\n" + body, suffix=".http")

    fuzz()


def test_roster_signature_bodies(running):
    federation, _ = running
    genuine = {"digest": "ab" * 32, "signature": base64.b64encode(b"\x01" * 64).decode()}

    @fuzz_settings("http", share=0.15)
    @given(st.data())
    def fuzz(data):
        body = _json_body(data.draw, genuine)
        run_case("http", lambda: answer(federation.request("POST", "/v1/roster/signature", body)),
                 data=b"POST /v1/roster/signature\n" + body, suffix=".http")

    fuzz()


def test_round_step_bodies(running):
    """The open step (advertise) gets mutated advertisements from each hospital's own secure-aggregation
    client; the other steps get bodies too (refused before parsing: not their turn)."""
    from core.secagg import RoundParams, SecAggClient

    federation, view = running
    params = RoundParams.from_dict(view["secagg"])
    peers = {h.hospital_id: h.public_key for h in federation.hospitals}
    genuine = {h.hospital_id: SecAggClient(params, h.hospital_id, h.key, peers).advertise().to_bytes()
               for h in federation.hospitals}

    @fuzz_settings("http", share=0.3)
    @given(st.data())
    def fuzz(data):
        hospital = data.draw(st.sampled_from(federation.hospitals))
        step = data.draw(st.sampled_from(["advertise"] * 4 + ["share", "mask", "consistency", "unmask", "update",
                                                              "leave", "x"]))
        body = mutate(genuine[hospital.hospital_id], data.draw) if data.draw(st.integers(0, 5)) else b""
        path = f"/v1/rounds/{view['round']}/{view['attempt']}/{step}"
        run_case("http", lambda: answer(federation.request("POST", path, body, hospital=hospital)),
                 data=f"POST {path}\n".encode() + body, suffix=".http")

    fuzz()


def test_authentication_headers(running):
    """Every header a signed request carries, set to hostile text: 401 (or 409 for a replay), never 5xx."""
    federation, _ = running
    hospital = federation.hospitals[0]
    header_text = st.one_of(st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80),
                            st.sampled_from(["nan", "inf", "-inf", "1e400", "0", "-1", "1" * 400, "h01", "ab" * 16,
                                             "=" * 8, "A" * 88, " ", "h01 ", "0x10"]))

    @fuzz_settings("http", share=0.2)
    @given(st.data())
    def fuzz(data):
        headers = hospital.headers("GET", "/v1/status", b"", federation.federation_id)
        for name in data.draw(st.lists(st.sampled_from(sorted(headers)), min_size=1, max_size=4, unique=True)):
            if data.draw(st.integers(0, 4)) == 0:
                headers.pop(name)
            else:
                headers[name] = data.draw(header_text)
        check_headers(federation, headers)

    fuzz()


def check_headers(federation, headers: dict[str, str]):
    """GET /v1/status with exactly ``headers`` (kept in the corpus as "HEADERS" and their JSON)."""
    raw = {name: value.encode("latin-1") for name, value in headers.items()}  # HTTP header bytes, as sent
    return run_case("http", lambda: answer(federation.request("GET", "/v1/status", headers=raw, sign=False)),
                    data=b"HEADERS GET /v1/status\n" + json.dumps(headers).encode(), suffix=".http")


def test_plain_update_bodies(tmp_path_factory):
    """F/FPDP without secure aggregation: the model delta itself (safetensors), parsed by the coordinator."""
    import torch

    from core.federation.aggregation import PlainAggregation
    from core.federation.protocol import Step
    from core.federation.weights import ParameterLayout, tensors_to_bytes
    from core.models import build_model

    model = build_model("small_cnn", 5)
    layout = ParameterLayout(model)
    genuine = tensors_to_bytes({name: torch.zeros(shape) for name, shape in layout.shapes.items()})
    aggregation = PlainAggregation(layout, threshold=2)

    @fuzz_settings("http", share=0.1)
    @given(st.data())
    def fuzz(data):
        body = mutate(genuine, data.draw)
        if data.draw(st.integers(0, 3)) == 0:  # a header naming other dtypes and shapes
            length = int.from_bytes(genuine[:8], "little")
            header = json.loads(genuine[8:8 + length])
            name = data.draw(st.sampled_from(sorted(header)))
            header[name] = {"dtype": data.draw(st.sampled_from(["F64", "F16", "I32", "F32"])),
                            "shape": data.draw(st.lists(st.integers(0, 4), max_size=3)),
                            "data_offsets": header[name]["data_offsets"]}
            text = json.dumps(header).encode()
            body = len(text).to_bytes(8, "little") + text + genuine[8 + length:]
        run_case("http", lambda: aggregation.receive(Step.UPDATE, "h01", body), data=b"UPDATE\n" + body,
                 suffix=".http")

    fuzz()
    assert np.isfinite(layout.length)


def test_decline_and_leave_bodies(running):
    """Last: a body that is accepted takes the hospital out of the federation."""
    federation, _ = running
    hospital = federation.hospitals[2]

    @fuzz_settings("http", share=0.1)
    @given(st.data())
    def fuzz(data):
        path = data.draw(st.sampled_from(["/v1/decline", "/v1/leave", "/v1/rounds/1/1/leave"]))
        body = _json_body(data.draw, {"reason": "fuzz"})
        run_case("http", lambda: answer(federation.request("POST", path, body, hospital=hospital)),
                 data=f"POST {path}\n".encode() + body, suffix=".http")

    fuzz()


@pytest.mark.parametrize("path", corpus_params("http"))
def test_the_http_corpus(running, path):
    """Each file: "METHOD /path" on the first line, then the body (signed by the first hospital); or
    "HEADERS GET /v1/status", then the request's headers as JSON."""
    federation, _ = running
    first, _, body = path.read_bytes().partition(b"\n")
    if first.startswith(b"HEADERS "):
        check_headers(federation, json.loads(body))
        return
    method, _, route = first.decode().partition(" ")
    run_case("http", lambda: answer(federation.request(method, route, body)), data=path.read_bytes(), suffix=".http")
