"""`dopamine coordinator init` and invitation files: private keys 0600, hostile or edited invitations refused."""

import json

import pytest

from core.cli import main
from core.errors import FederationError
from core.federation.invitation import read_invitation


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    folder = tmp_path_factory.mktemp("init") / "fed"
    code = main(["coordinator", "init", str(folder), "--name", "Retina study", "--mode", "fscdp", "--rounds", "5",
                 "--hospitals", "3", "--sample-rate", "0.1", "--delta", "1e-5", "--host", "coord.example.org,10.0.0.5",
                 "--port", "9443"])
    assert code == 0
    return folder


def test_init_creates_the_federation_folder(federation):
    invitations = sorted((federation / "invitations").glob("*.invite"))
    assert len(invitations) == 3
    for secret in [federation / "signing.key", federation / "tls" / "ca.key", federation / "tls" / "server.key",
                   *invitations]:
        assert oct(secret.stat().st_mode & 0o777) == "0o600", secret
    invitation = read_invitation(invitations[0])
    assert invitation.coordinator_url == "https://coord.example.org:9443"
    assert invitation.plan.mode == "fscdp" and invitation.plan.secagg
    # K = 3 with the default t = 1: 2m > K + t needs all three (no dropout tolerated, said in the plan).
    assert (invitation.plan.threshold, invitation.plan.colluders) == (3, 1)
    assert invitation.plan.hospital_names == ["hospital-01", "hospital-02", "hospital-03"]
    assert len(invitation.ca_fingerprint.split()) == 16
    tokens = {read_invitation(p).token for p in invitations}
    assert len(tokens) == 3  # one one-time token per hospital


def test_status_reads_the_folder_without_a_server(federation, capsys):
    assert main(["coordinator", "status", str(federation), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["status"] == "enrolling" and status["invitations"] == 3 and status["hospitals"] == []
    assert main(["coordinator", "status", str(federation)]) == 0
    assert "Hospitals enrolled: 0 of 3 invited" in capsys.readouterr().out


@pytest.mark.parametrize("args,words", [
    (["--mode", "fscdp", "--rounds", "2", "--hospitals", "3", "--threshold", "4"], "threshold"),
    # The lying-coordinator rule: K = 4, m = 2 lets view splitting unmask one hospital.
    (["--mode", "fscdp", "--rounds", "2", "--hospitals", "4", "--threshold", "2", "--colluders", "0"], "2m > K + t"),
    (["--mode", "fscdp", "--rounds", "2", "--hospitals", "5", "--threshold", "3", "--colluders", "1"], "2m > K + t"),
    (["--mode", "fscdp", "--rounds", "2", "--hospitals", "3", "--colluders", "3"], "colluding"),
    (["--mode", "fscdp", "--rounds", "2", "--hospitals", "3", "--batch-size", "8"], "sample-rate"),
    (["--mode", "f", "--rounds", "2", "--hospitals", "3", "--noise-multiplier", "1"], "adds no noise"),
    (["--mode", "fpdp", "--rounds", "0", "--hospitals", "3"], "at least one round"),
])
def test_bad_plans_are_refused_with_a_clear_message(tmp_path, capsys, args, words):
    assert main(["coordinator", "init", str(tmp_path / "f"), "--name", "x", *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err


def test_init_refuses_an_existing_folder(federation, capsys):
    assert main(["coordinator", "init", str(federation), "--name", "x", "--mode", "f", "--rounds", "1",
                 "--hospitals", "2"]) == 1
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("tamper,words", [
    (lambda d: d["plan"].update(noise_multiplier=0.1), "plan hash"),
    (lambda d: d.update(coordinator_url="http://coord.example.org:9443"), "https"),
    (lambda d: d.update(version=99), "version"),
    (lambda d: d.pop("token"), "missing"),
    (lambda d: d.update(ca_certificate="-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"), "CA"),
])
def test_edited_invitations_are_refused(federation, tmp_path, tamper, words):
    data = json.loads(sorted((federation / "invitations").glob("*.invite"))[0].read_text())
    tamper(data)
    path = tmp_path / "edited.invite"
    path.write_text(json.dumps(data))
    with pytest.raises(FederationError, match=words):
        read_invitation(path)


@pytest.mark.parametrize("content", [b"", b"\xff\xfe garbage", b"[]", b"{" * 10, b"x" * 300_000])
def test_garbage_invitations_are_refused(tmp_path, content):
    path = tmp_path / "garbage.invite"
    path.write_bytes(content)
    with pytest.raises(FederationError, match="not a usable Dopamine invitation"):
        read_invitation(path)
