"""A hospital behind its IT's HTTPS proxy (issue 13, a network that misbehaves).

- An explicit proxy (CONNECT) carries the hospital's traffic; the machine's proxy variables and CA bundle
  stay ignored, and the federation CA stays pinned through the tunnel.
- A proxy whose policy refuses the tunnel, or asks for a password, is a final one-line error that says
  what IT must allow.
- A TLS-inspecting proxy (its own CA, a certificate for the coordinator's name made on the fly) is refused
  before anything is sent, with a message naming TLS inspection and the host:port IT must exempt.
- A real hospital (``dopamine join``'s client) joins and finishes a round through a CONNECT proxy; behind
  an inspecting one it refuses to enroll.
"""

from __future__ import annotations

import pytest
from fault_proxy import ConnectProxy, InspectingProxy


def _health_app():
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/v1/health")
    def health():
        return {"status": "ok"}

    return app


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    from core.federation.tls import write_federation_tls

    return write_federation_tls(tmp_path_factory.mktemp("tls"), name="proxied", hosts=["127.0.0.1"])


def _connection(url, tls, **kwargs):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from core.federation.transport import CoordinatorConnection

    return CoordinatorConnection(url, tls.ca_cert, federation_id="f", hospital_id="h01", key=Ed25519PrivateKey.generate(),
                                 give_up_after_s=3, max_backoff_s=0.2, **kwargs)


def test_an_explicit_proxy_carries_the_traffic_and_the_environment_is_ignored(tls, https_server, monkeypatch):
    with https_server(_health_app(), tls.server_cert, tls.server_key) as url, ConnectProxy() as proxy, \
            ConnectProxy(refuse="403 Forbidden") as environment_proxy:
        # The machine's settings point elsewhere: a proxy that refuses everything, a CA bundle of no one.
        for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
            monkeypatch.setenv(name, environment_proxy.url)
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
        direct = _connection(url, tls)
        proxied = _connection(url, tls, proxy=proxy.url)
        try:
            assert direct.get_json("/v1/health")["status"] == "ok"
            assert proxied.get_json("/v1/health")["status"] == "ok"
        finally:
            direct.close()
            proxied.close()
    port = url.rsplit(":", 1)[1]
    assert proxy.connects == [f"127.0.0.1:{port}"]  # the tunnel went to the coordinator, through this proxy
    assert proxy.stats.bytes_up > 0 and proxy.stats.bytes_down > 0
    assert environment_proxy.connects == []  # trust_env stays off: the variables were never read


@pytest.mark.parametrize(("status", "words"), [
    ("403 Forbidden", "IT must allow HTTPS (CONNECT) from this computer to 127.0.0.1:"),
    ("407 Proxy Authentication Required", "http://user:password@host:port"),
], ids=["403", "407"])
def test_a_proxy_that_refuses_the_tunnel_is_a_final_clear_error(status, words, tls, https_server):
    from core.errors import NetworkError

    retries: list[str] = []
    with https_server(_health_app(), tls.server_cert, tls.server_key) as url, ConnectProxy(refuse=status) as proxy:
        connection = _connection(url, tls, proxy=proxy.url, on_retry=retries.append)
        try:
            with pytest.raises(NetworkError) as refused:
                connection.get_json("/v1/health")
        finally:
            connection.close()
    message = str(refused.value)
    assert words in message and status.split()[0] in message and "\n" not in message, message
    assert proxy.refused == 1 and not retries  # asked once, not retried: only IT can change it


def test_a_tls_inspecting_proxy_is_refused_and_told_what_to_exempt(tls, https_server):
    import requests

    from core.errors import NetworkError

    with https_server(_health_app(), tls.server_cert, tls.server_key) as url, InspectingProxy(tls.ca_cert) as mitm:
        port = url.rsplit(":", 1)[1]
        connection = _connection(url, tls, proxy=mitm.url)
        try:
            with pytest.raises(NetworkError) as refused:
                connection.request("POST", "/v1/enroll", body=b'{"token": "secret"}', content_type="application/json")
        finally:
            connection.close()
        assert mitm.handshakes == 1 and mitm.intercepted == 0 and mitm.plaintext == 0  # nothing readable left
        # The control: a client that trusts the inspection CA (as the machine's bundle would) is intercepted,
        # and the proxy reads its request in the clear.
        session = requests.Session()
        session.trust_env = False
        answer = session.get(url + "/v1/health", verify=str(mitm.ca_file), proxies={"https": mitm.url}, timeout=10)
        session.close()
    assert answer.json()["status"] == "ok" and mitm.intercepted == 1 and mitm.plaintext > 0
    message = str(refused.value)
    for words in ("signed by this federation's CA", "pinned", "inspecting TLS", f"exempt 127.0.0.1:{port}",
                  "impostor"):
        assert words in message, message
    assert "\n" not in message


def test_proxy_settings_are_checked_and_kept_in_the_home(tmp_path):
    from core.errors import ConfigError
    from core.federation.network import (
        NetworkSettings,
        check_proxy_url,
        load_network_settings,
        network_for,
        save_network_settings,
    )
    from core.home import HospitalHome

    assert check_proxy_url("proxy.example.org:3128") == "http://proxy.example.org:3128"
    assert check_proxy_url("http://user:pw@10.0.0.1:8080/") == "http://user:pw@10.0.0.1:8080"
    assert check_proxy_url("none") == check_proxy_url("") == check_proxy_url(None) == ""
    for bad in ("socks5://proxy:1080", "http://proxy", "http://proxy:3128/path", "http://:3128"):
        with pytest.raises(ConfigError, match="http://host:port"):
            check_proxy_url(bad)
    home = HospitalHome.at(tmp_path / "home")
    assert load_network_settings(home) == NetworkSettings()
    save_network_settings(home, NetworkSettings(proxy="proxy.example.org:3128", timeout_s=8))
    assert load_network_settings(home).proxy == "http://proxy.example.org:3128"
    assert network_for(home, proxy="none").proxy == ""  # --proxy none: direct, for this command
    assert network_for(home, timeout_s=20).timeout_s == 20 and network_for(home).timeout_s == 8
    home.network_settings.write_text('proxy = "ftp://x"\n')
    with pytest.raises(ConfigError, match="network.toml"):
        load_network_settings(home)
    with pytest.raises(ConfigError, match="between 1 and 3600"):
        network_for(home.__class__.at(tmp_path / "other"), timeout_s=0)


def test_status_and_leave_go_through_the_homes_proxy_unless_told_otherwise(tmp_path, https_server):
    """What the app asks outside a run (status, peers, leave) reads the home's network.toml too."""
    from coordinator_kit import Hospital, LiveFederation

    from core.federation import client
    from core.federation.membership import MembershipFolder
    from core.federation.network import NetworkSettings, save_network_settings
    from core.home import HospitalHome

    federation = LiveFederation(tmp_path / "fed").start()
    invitation = federation.invitations[0]
    home = HospitalHome.at(tmp_path / "home")
    hospital = Hospital(invitation.hospital_id, invitation.token, home.identity())
    enrolled = federation.request("POST", "/v1/enroll", hospital.enrollment(), hospital=hospital,
                                  headers={"Content-Type": "application/json"})
    assert enrolled.status_code == 200, enrolled.text
    folder = MembershipFolder.of(home, invitation)
    folder.create(invitation)
    folder.save_state(folder.load_state(invitation))
    try:
        with federation.serve(https_server), ConnectProxy() as proxy:
            save_network_settings(home, NetworkSettings(proxy=proxy.url))
            summary = client.status(invitation, home)
            through_proxy = len(proxy.connects)
            client.leave(invitation, home, "moving", proxy="none")  # --proxy none: direct, this once
            after_leave = len(proxy.connects)
    finally:
        federation.stop()
    assert summary.status and through_proxy == 1 and after_leave == 1
    assert folder.load_state(invitation).finished == "left"


def test_join_and_leave_take_a_proxy_option():
    from core.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["join", "inv.json", "--data", "d", "--proxy", "http://proxy:3128",
                              "--network-timeout", "15"])
    assert args.proxy == "http://proxy:3128" and args.network_timeout == 15
    assert parser.parse_args(["leave", "inv.json", "--proxy", "none"]).proxy == "none"


# ---- a real hospital -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def proxy_data(tmp_path_factory):
    from core.data.synthetic import write_demo_data

    root = tmp_path_factory.mktemp("proxy-data")
    write_demo_data(root, hospitals=3, per_hospital=24, test_images=0, size=40, seed=7)
    return root


@pytest.mark.slow
def test_a_hospital_behind_an_https_proxy_joins_and_finishes_a_round(tmp_path, proxy_data):
    """h01's only way out is its proxy (its invitation names a port nothing listens on, which the proxy
    routes to the coordinator): it enrolls, signs the roster and takes part in the round through it."""
    from network_kit import UPLOAD_BYTES, Link, check_finished, run_network_cell, write_network_result

    result = run_network_cell("https-proxy-1-round", tmp_path, proxy_data, {1: Link(connect=True)}, rounds=1)
    write_network_result(result)
    check_finished(result, rounds=1)
    proxy = result.proxies["h01"]
    assert proxy["connects"] >= 2  # the client's connection and its presence poll's, at least
    assert proxy["bytes_up"] > UPLOAD_BYTES and proxy["bytes_down"] > 0, proxy


@pytest.mark.slow
def test_a_hospital_behind_a_tls_inspecting_proxy_enrolls_nowhere(tmp_path, https_server, proxy_data):
    """``dopamine join --proxy`` through an inspecting proxy: one line naming TLS inspection and the host:port
    to exempt; the proxy got no plaintext and the coordinator no enrollment."""
    import os
    import subprocess
    import sys

    from coordinator_kit import LiveFederation
    from crash_kit import ROOT

    federation = LiveFederation(tmp_path / "fed").start()
    invitation = sorted(federation.init.invitations)[0]
    try:
        with federation.serve(https_server) as url, InspectingProxy(federation.ca_file) as mitm:
            joined = subprocess.run(
                [sys.executable, "-m", "core.cli", "join", str(invitation), "--data", str(proxy_data / "hospital_01"),
                 "--home", str(tmp_path / "home"), "--max-epsilon", "10", "--accept-roster", "any",
                 "--proxy", mitm.url], capture_output=True, text=True, timeout=120, cwd=ROOT,
                env={**os.environ, "OMP_NUM_THREADS": "1"})
        enrolled = federation.coordinator.store.hospitals()
    finally:
        federation.stop()
    lines = [line for line in joined.stderr.splitlines() if line.strip()]
    assert joined.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), joined.stderr[-3000:]
    port = url.rsplit(":", 1)[1]
    assert "inspecting TLS" in lines[0] and f"exempt 127.0.0.1:{port} from TLS inspection" in lines[0], lines[0]
    assert mitm.connects == [f"127.0.0.1:{port}"] and mitm.handshakes == 1  # it did stand in the way
    assert mitm.intercepted == 0 and mitm.plaintext == 0
    assert enrolled == []
