"""Hostile and broken requests to the coordinator: each gets a 4xx with a clear message, and the
coordinator keeps serving everybody else."""

import base64
import json
import time

import pytest
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.federation.auth import sign_request
from core.federation.invitation import read_invitation
from core.federation.layout import InitConfig, init_federation


def _raw(key) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Api:
    """Signs requests like the hospital client does, but lets a test break every part of them."""

    def __init__(self, url, ca_file, federation_id):
        self.url, self.ca, self.federation_id = url, str(ca_file), federation_id
        self.session = requests.Session()
        self.session.trust_env = False

    def send(self, method, path, *, key, hospital_id, body=b"", headers=None, now=None, sign_body=None):
        prepared = self.session.prepare_request(requests.Request(method, self.url + path, data=body or None))
        signed = sign_request(key, method=method, path=prepared.path_url, body=body if sign_body is None else sign_body,
                              hospital_id=hospital_id, federation_id=self.federation_id, now=now)
        prepared.headers.update(signed)
        prepared.headers.update(headers or {})
        return self.session.send(prepared, verify=self.ca, timeout=30), prepared

    def resend(self, prepared):
        return self.session.send(prepared, verify=self.ca, timeout=30)

    def enroll(self, invitation, key, *, token=None, num_images=24):
        body = json.dumps({"token": token or invitation.token, "hospital_id": invitation.hospital_id,
                           "public_key": base64.b64encode(_raw(key)).decode(), "num_images": num_images}).encode()
        return self.send("POST", "/v1/enroll", key=key, hospital_id=invitation.hospital_id, body=body)[0]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory, https_server):
    from core.federation.app import create_app
    from core.federation.coordinator import Coordinator
    from core.federation.simulate import free_port

    root = tmp_path_factory.mktemp("api")
    port = free_port()
    init = init_federation(InitConfig(folder=root / "fed", name="api", mode="fscdp", rounds=2, hospitals=3,
                                      hosts=["127.0.0.1"], port=port, image_size=32, sample_rate=0.5, delta=1e-3))
    service = Coordinator(root / "fed")
    service.start()
    invitations = [read_invitation(p) for p in sorted(init.invitations)]
    with https_server(create_app(service), root / "fed" / "tls" / "server.pem", root / "fed" / "tls" / "server.key",
                          port) as url:
        api = Api(url, root / "fed" / "tls" / "ca.pem", init.plan.federation_id)
        keys = [Ed25519PrivateKey.generate() for _ in invitations]
        yield api, invitations, keys, service
        api.session.close()
    service.stop()


def _detail(response) -> str:
    return response.json()["detail"]


def test_wrong_token_is_refused(coordinator):
    api, invitations, keys, _ = coordinator
    response = api.enroll(invitations[0], keys[0], token="not-the-token")
    assert response.status_code == 403
    assert "not valid" in _detail(response)


def test_enrollment_binds_the_key_once(coordinator):
    api, invitations, keys, service = coordinator
    assert api.enroll(invitations[0], keys[0]).status_code == 200
    assert api.enroll(invitations[0], keys[0]).status_code == 200  # the same hospital retrying
    stolen = api.enroll(invitations[0], Ed25519PrivateKey.generate())  # a used token with another key
    assert stolen.status_code == 409
    assert "already used" in _detail(stolen)
    other = api.enroll(invitations[1], keys[1], token=invitations[0].token)  # someone else's token
    assert other.status_code == 403


def test_enrollment_needs_proof_of_the_key(coordinator):
    api, invitations, keys, _ = coordinator
    body = json.dumps({"token": invitations[1].token, "hospital_id": invitations[1].hospital_id,
                       "public_key": base64.b64encode(_raw(keys[1])).decode(), "num_images": 24}).encode()
    response, _ = api.send("POST", "/v1/enroll", key=Ed25519PrivateKey.generate(), hospital_id=invitations[1].hospital_id,
                           body=body)
    assert response.status_code == 401
    assert "signature" in _detail(response)


@pytest.mark.parametrize("body,status,words", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (b'{"token": "x"}', 400, "Enrollment needs"),
])
def test_malformed_enrollment_bodies(coordinator, body, status, words):
    api, invitations, keys, _ = coordinator
    response, _ = api.send("POST", "/v1/enroll", key=keys[2], hospital_id=invitations[2].hospital_id, body=body)
    assert response.status_code == status
    assert words in _detail(response)


def test_unknown_or_unsigned_clients_are_refused(coordinator):
    api, invitations, keys, _ = coordinator
    response, _ = api.send("GET", "/v1/plan", key=Ed25519PrivateKey.generate(), hospital_id="h99")
    assert response.status_code == 401 and "Unknown hospital" in _detail(response)
    response, _ = api.send("GET", "/v1/plan", key=Ed25519PrivateKey.generate(), hospital_id=invitations[0].hospital_id)
    assert response.status_code == 401 and "signature" in _detail(response)  # enrolled id, wrong key
    plain = api.session.get(api.url + "/v1/plan", verify=api.ca, timeout=10)
    assert plain.status_code == 401 and "not signed" in _detail(plain)


def test_replayed_and_stale_requests_are_refused(coordinator):
    api, invitations, keys, _ = coordinator
    response, prepared = api.send("GET", "/v1/plan", key=keys[0], hospital_id="h01")
    assert response.status_code == 200
    replay = api.resend(prepared)
    assert replay.status_code == 409 and "replayed" in _detail(replay)
    stale, _ = api.send("GET", "/v1/plan", key=keys[0], hospital_id="h01", now=time.time() - 3600)
    assert stale.status_code == 401 and "clock" in _detail(stale)


def test_tampered_body_is_refused(coordinator):
    api, invitations, keys, _ = coordinator
    response, _ = api.send("POST", "/v1/decline", key=keys[0], hospital_id="h01", body=b'{"reason": "mine"}',
                           sign_body=b'{"reason": "other"}')
    assert response.status_code == 401


def _sign_the_roster(api, keys, service):
    """Each hospital signs the frozen roster; forged, mismatched and repeated signatures are refused."""
    from core.federation.roster import FederationRoster, sign_roster

    response, _ = api.send("GET", "/v1/roster", key=keys[0], hospital_id="h01")
    roster = FederationRoster.from_dict(response.json()["roster"])
    assert roster.ids == ["h01", "h02", "h03"] and response.json()["digest"] == roster.digest()

    def post(number, digest, signature):
        body = json.dumps({"digest": digest, "signature": base64.b64encode(signature).decode()}).encode()
        return api.send("POST", "/v1/roster/signature", key=keys[number], hospital_id=f"h0{number + 1}", body=body)[0]

    forged = sign_roster(Ed25519PrivateKey.generate(), roster)
    assert post(0, roster.digest(), forged).status_code == 400
    assert post(0, "0" * 64, sign_roster(keys[0], roster)).status_code == 409
    for number in range(3):
        assert post(number, roster.digest(), sign_roster(keys[number], roster)).status_code == 200
        if number < 2:
            assert service.status == "confirming"  # no round before every hospital signed
    assert post(0, roster.digest(), sign_roster(keys[0], roster)).status_code == 200  # idempotent


def test_oversized_and_malformed_uploads(coordinator):
    api, invitations, keys, service = coordinator
    for invitation, key in zip(invitations[1:], keys[1:], strict=True):
        assert api.enroll(invitation, key).status_code == 200
    deadline = time.time() + 10
    while service.status != "confirming":  # every hospital enrolled: the roster is frozen
        assert time.time() < deadline
        time.sleep(0.05)
    _sign_the_roster(api, keys, service)
    deadline = time.time() + 10
    while service.status != "running":
        assert time.time() < deadline
        time.sleep(0.05)
    big = b"x" * (service.update_body_limit + 1)
    response, _ = api.send("POST", "/v1/rounds/1/1/mask", key=keys[0], hospital_id="h01", body=big)
    assert response.status_code == 413 and "limit" in _detail(response)
    response, _ = api.send("POST", "/v1/rounds/1/1/advertise", key=keys[0], hospital_id="h01", body=b"garbage")
    assert response.status_code == 400 and "Malformed advertise message" in _detail(response)
    response, _ = api.send("POST", "/v1/rounds/1/1/mask", key=keys[0], hospital_id="h01", body=b"DSA1")
    assert response.status_code == 409 and "step advertise" in _detail(response)  # not that step yet
    response, _ = api.send("POST", "/v1/rounds/7/1/advertise", key=keys[0], hospital_id="h01", body=b"x")
    assert response.status_code == 409 and "not open" in _detail(response)
    response, _ = api.send("POST", "/v1/rounds/1/1/nonsense", key=keys[0], hospital_id="h01", body=b"x")
    assert response.status_code == 404


def test_the_coordinator_keeps_serving_after_all_that(coordinator):
    api, invitations, keys, service = coordinator
    response, _ = api.send("GET", "/v1/state", key=keys[1], hospital_id="h02")
    assert response.status_code == 200
    view = response.json()
    assert view["status"] == "running" and view["phase"] == "advertise" and view["participant"]
    peers, _ = api.send("GET", "/v1/hospitals", key=keys[2], hospital_id="h03")
    fingerprints = [h["fingerprint"] for h in peers.json()["hospitals"]]
    assert len(fingerprints) == 3 and all(len(f.split()) == 16 for f in fingerprints)
    assert api.session.get(api.url + "/v1/health", verify=api.ca, timeout=10).json()["status"] == "ok"


def test_the_openapi_schema_is_served(coordinator):
    api, *_ = coordinator
    schema = api.session.get(api.url + "/openapi.json", verify=api.ca, timeout=10).json()
    for path in ("/v1/enroll", "/v1/state", "/v1/rounds/{round}/{attempt}/{step}", "/v1/hospitals"):
        assert path in schema["paths"]
