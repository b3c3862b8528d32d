"""``dopamine trust list|add|remove``: one hospital home's trusted model signers, by fingerprint."""

from __future__ import annotations

import base64
import json

import torch

from core.cli import main
from core.home import HospitalHome
from core.models import build_model
from core.models.package import ModelCard, write_package
from core.signing import fingerprint, generate_private_key, public_key_bytes


def package(path, key):
    torch.manual_seed(0)
    card = ModelCard(
        architecture="small_cnn", classes=["a", "b"], preprocessing={"size": 32}, mode="c", epsilon=None,
        delta=None, accountant=None, noise_multiplier=None, sample_rate=None, max_grad_norm=None, steps=1,
        rounds=None, hospitals=1, image_counts={}, metrics={}, created="2026-01-01T00:00:00+00:00",
        software_version="0.1.0")
    write_package(path, build_model("small_cnn", 2).state_dict(), card, key)
    return path


def listed(capsys, home) -> list[dict]:
    assert main(["trust", "list", "--json", "--home", str(home)]) == 0
    return json.loads(capsys.readouterr().out)


def test_add_list_remove(tmp_path, capsys):
    home = tmp_path / "home"
    own = public_key_bytes(HospitalHome.at(home).identity())
    assert [(s["kind"], s["fingerprint"]) for s in listed(capsys, home)] == [("this hospital", fingerprint(own))]

    sender = generate_private_key()
    model = package(tmp_path / "clinic.dpm", sender)
    assert main(["trust", "add", str(model), "--name", "City Eye Clinic", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert fingerprint(public_key_bytes(sender)) in out and "Compare" in out

    raw = generate_private_key()
    key_text = base64.b64encode(public_key_bytes(raw)).decode()
    assert main(["trust", "add", "--key", key_text, "--name", "Lab B", "--home", str(home),
                 "--fingerprint", fingerprint(public_key_bytes(raw)).upper()]) == 0
    capsys.readouterr()
    signers = listed(capsys, home)
    assert [(s["name"], s["kind"]) for s in signers] == [
        ("this hospital", "this hospital"), ("City Eye Clinic", "added by user"), ("Lab B", "added by user")]
    assert signers[1]["source"] == str(model.resolve()) and signers[2]["source"] == "--key"

    main(["trust", "list", "--home", str(home)])
    text = capsys.readouterr().out
    assert "City Eye Clinic  (added by user, added " in text and fingerprint(public_key_bytes(sender)) in text

    assert main(["trust", "remove", fingerprint(public_key_bytes(sender))[:9], "--home", str(home)]) == 0
    assert "No longer trusted: City Eye Clinic" in capsys.readouterr().out
    assert [s["name"] for s in listed(capsys, home)] == ["this hospital", "Lab B"]


def test_mistakes_are_one_line_errors_and_change_nothing(tmp_path, capsys):
    home = tmp_path / "home"
    HospitalHome.at(home).identity()
    raw = public_key_bytes(generate_private_key())
    key_text = base64.b64encode(raw).decode()

    def fails(*args: str, expect: str) -> None:
        code = main(["trust", *args, "--home", str(home)])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("error: ") and expect in err and err.count("\n") == 1

    fails("add", "--key", key_text, "--name", "X", "--fingerprint", "0000 1111", expect="nothing was added")
    fails("add", "--key", "bm90IGEga2V5", "--name", "X", expect="base64")
    fails("add", "--key", key_text, "--name", "  ", expect="name")
    fails("remove", "abcd", expect="at least 8 hex digits")
    fails("remove", fingerprint(raw), expect="No key added by you")
    own = fingerprint(public_key_bytes(HospitalHome.at(home).identity()))
    fails("remove", own, expect="cannot be removed here")
    assert not HospitalHome.at(home).trusted_keys.exists()

    # A file whose signature fails tells nothing about its signer: nothing is added.
    model = package(tmp_path / "m.dpm", generate_private_key())
    import zipfile

    with zipfile.ZipFile(model) as source:
        members = {name: source.read(name) for name in source.namelist()}
    card = json.loads(members["card.json"])
    card["description"] = "edited"
    members["card.json"] = json.dumps(card).encode()
    with zipfile.ZipFile(model, "w") as target:
        for name, data in members.items():
            target.writestr(name, data)
    fails("add", str(model), "--name", "X", expect="signature does not match")
    assert not HospitalHome.at(home).trusted_keys.exists()
