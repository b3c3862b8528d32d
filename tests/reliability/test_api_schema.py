"""The coordinator's API fuzzed from its own OpenAPI document, over real HTTPS with the federation's CA.

schemathesis reads /openapi.json from the running coordinator and generates requests for every
operation, valid ones and invalid ones; a requests session signs each one as the hospital client does
(Ed25519 over method, path, body hash, time and nonce). Every answer must be no 5xx, a documented
status with the documented content type, and a body that matches its documented schema; invalid data
must be refused with a 4xx.

The authentication checks are explicit, for every authenticated operation in the document: unsigned,
replayed, expired, signed for another federation, and signed by a hospital enrolled in another
federation: all refused, with one line saying why.
"""

import base64
import json
import time
from pathlib import Path

import pytest
import requests
import schemathesis
from coordinator_kit import LiveFederation
from hypothesis import given
from hypothesis.errors import Unsatisfiable
from reliability_kit import COUNTS, fuzz_settings, watch_everything
from schemathesis import checks as st_checks
from schemathesis.core.parameters import ParameterLocation
from schemathesis.generation import GenerationMode

pytestmark = pytest.mark.slow  # a coordinator served over HTTPS

CHECKS = [st_checks.not_a_server_error, st_checks.status_code_conformance, st_checks.content_type_conformance,
          st_checks.response_schema_conformance, st_checks.negative_data_rejection]


class Sign(requests.auth.AuthBase):
    """Sign each prepared request as core.federation.transport does (after schemathesis built it)."""

    def __init__(self, federation: LiveFederation, hospital=None, **options) -> None:
        self.federation, self.hospital, self.options = federation, hospital or federation.hospitals[0], options

    def __call__(self, request):
        body = request.body or b""
        body = body.encode() if isinstance(body, str) else body
        request.headers.update(self.hospital.headers(request.method, request.path_url, body,
                                                     self.options.get("federation_id", self.federation.federation_id),
                                                     now=self.options.get("now")))
        return request


@pytest.fixture(scope="module")
def served(tmp_path_factory, https_server):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("core.federation.app.LONG_POLL_S", 0.3)  # long polls held 0.3 s, not 20 s, while fuzzing
        federation = LiveFederation(tmp_path_factory.mktemp("api")).start()
        federation.bring_to_round()
        with federation.serve(https_server) as url:
            yield federation, url
        federation.stop()


def _session(federation, **options) -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    session.verify = str(federation.ca_file)
    session.auth = Sign(federation, **options)
    return session


def _document(url: str, ca: Path) -> dict:
    answer = requests.get(url + "/openapi.json", verify=str(ca), timeout=30)
    answer.raise_for_status()
    return answer.json()


def _signed_operations(document: dict) -> list[tuple[str, str, dict]]:
    """(method, path, operation) of every operation the document says needs the signature headers."""
    found = []
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if operation.get("security"):
                found.append((method.upper(), path, operation))
    return found


def test_the_api_document_describes_every_route(served):
    federation, url = served
    document = _document(url, federation.ca_file)
    signed = _signed_operations(document)
    routes = {(m, p) for m, p, _ in signed} | {("GET", "/v1/health")}
    from core.federation.protocol import Route

    expected = {getattr(Route, name) for name in dir(Route) if name.isupper()}
    assert {p for _, p in routes} == expected, "a route is missing from the OpenAPI document"
    assert len(document["components"]["securitySchemes"]) == 4
    for method, path, operation in signed:
        for status in ("401", "409", "413"):
            assert status in operation["responses"], f"{method} {path} does not document {status}"


def test_the_api_fuzzed_from_its_schema(served):
    """Every operation, positive and negative data, through schemathesis' checks."""
    federation, url = served
    schema = schemathesis.openapi.from_url(url + "/openapi.json", verify=str(federation.ca_file))
    signed, unsigned = _session(federation), _session(federation)
    unsigned.auth = None
    operations = [result.ok() for result in schema.get_all_operations()]
    share = 1 / len(operations)
    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            @fuzz_settings("api", share=share / 2)
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case):
                COUNTS["api"]["cases"] += 1
                # A case whose signature headers schemathesis made invalid (dropped, wrong type) goes out as it
                # is: the coordinator must refuse it. Every other case is signed properly.
                hostile_headers = case.meta is not None and case.meta.is_negative_at(ParameterLocation.HEADER)
                session = unsigned if hostile_headers else signed
                response = case.call(session=session, verify=str(federation.ca_file), timeout=30)
                COUNTS["api"]["refused" if response.status_code >= 400 else "accepted"] += 1
                case.validate_response(response, checks=CHECKS)

            try:
                with watch_everything() as seen:
                    fuzz()
                assert not seen, f"the coordinator unpickled or started a process: {seen}"
            except Unsatisfiable:  # an operation without parameters or body (health) has no invalid data
                assert mode == GenerationMode.NEGATIVE and not operation.path_parameters and not operation.body
            except Exception as exc:  # noqa: BLE001 - every operation is tried; all failures are reported
                failures.append(f"{operation.label} ({mode.value}): {exc}"[:3000])
    assert not failures, "\n\n".join(failures)


# --- authentication: every signed operation refuses what is not a fresh request of this federation ----

def _concrete(path: str) -> str:
    return path.replace("{round}", "1").replace("{attempt}", "1").replace("{step}", "advertise")


def _send(federation, url, method, path, *, body=b"", headers=None, auth=None):
    session = requests.Session()
    session.trust_env = False
    prepared = session.prepare_request(requests.Request(method, url + path, data=body or None, headers=headers or {},
                                                        auth=auth))
    return session, prepared, session.send(prepared, verify=str(federation.ca_file), timeout=30)


def _refused(response, status, words) -> str:
    detail = response.json()["detail"]
    assert response.status_code == status, f"{response.status_code}: {detail}"
    assert isinstance(detail, str) and "\n" not in detail and words in detail, detail
    return detail


@pytest.fixture(scope="module")
def other_federation(tmp_path_factory):
    """A second federation whose hospital h01 is enrolled there with its own key (and unknown here)."""
    federation = LiveFederation(tmp_path_factory.mktemp("api-other"), name="other").start()
    hospital = federation.hospitals[0]
    answer = federation.request("POST", "/v1/enroll", hospital.enrollment(), hospital=hospital,
                                headers={"Content-Type": "application/json"})
    assert answer.status_code == 200
    yield federation
    federation.stop()


def test_every_signed_operation_refuses_bad_requests(served, other_federation):
    federation, url = served
    operations = _signed_operations(_document(url, federation.ca_file))
    hospital = federation.hospitals[1]
    outsider = other_federation.hospitals[0]
    for method, template, _ in operations:
        path = _concrete(template) + ("?wait=0" if template in ("/v1/state", "/v1/presence") else "")
        # Enrollment parses its body before it checks the signature (the key to check is in it).
        body = hospital.enrollment() if template == "/v1/enroll" else b"{}" if method == "POST" else b""
        what = f"{method} {path}"

        _, _, unsigned = _send(federation, url, method, path, body=body)
        _refused(unsigned, 401, "not signed")

        expired = Sign(federation, hospital, now=time.time() - 3600)
        _refused(_send(federation, url, method, path, body=body, auth=expired)[2], 401, "clock")

        elsewhere = Sign(federation, hospital, federation_id=other_federation.federation_id)
        _refused(_send(federation, url, method, path, body=body, auth=elsewhere)[2], 401, "does not verify")

        # h01 of the other federation: same id as a hospital here, another key.
        foreign = Sign(other_federation, outsider, federation_id=federation.federation_id)
        if template != "/v1/enroll":
            _refused(_send(federation, url, method, path, body=body, auth=foreign)[2], 401, "does not verify")

        session, prepared, first = _send(federation, url, method, path, body=body, auth=Sign(federation, hospital))
        assert first.status_code != 401, f"{what}: a fresh signed request was refused: {first.text}"
        replay = session.send(prepared, verify=str(federation.ca_file), timeout=30)
        _refused(replay, 409, "replayed")
        COUNTS["api-auth"]["cases"] += 6
        COUNTS["api-auth"]["refused"] += 5


def test_a_non_finite_timestamp_is_refused(served):
    """'nan' parses as a float and is never more than the window away from any time: it must be refused."""
    federation, url = served
    for bad in (float("nan"), float("inf")):
        response = _send(federation, url, "GET", "/v1/status", auth=Sign(federation, now=bad))[2]
        _refused(response, 401, "timestamp")


def test_the_enrollment_needs_the_enrolled_key(served):
    """Enrollment is signed by the key it enrolls (proof of possession): another key is refused."""
    federation, url = served
    hospital, other = federation.hospitals[0], federation.hospitals[1]
    body = json.dumps({"token": hospital.token, "hospital_id": hospital.hospital_id, "num_images": 24,
                       "public_key": base64.b64encode(other.public_key).decode()}).encode()
    response = _send(federation, url, "POST", "/v1/enroll", body=body, headers={"Content-Type": "application/json"},
                     auth=Sign(federation, hospital))[2]
    _refused(response, 401, "does not verify")
