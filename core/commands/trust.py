"""``dopamine trust list|add|remove``: the model signers this hospital trusts (core.models.trust)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from core.commands.home import add_home_option, home_of


def register(subparsers) -> None:
    trust = subparsers.add_parser(
        "trust", help="the model signers this hospital trusts (list, add, remove)",
        description="A model's card (epsilon, training, accuracy) counts only when its signer is trusted: this "
                    "hospital's own key, the coordinator of a federation it joined, or a key added here after "
                    "comparing its fingerprint with the sender's.",
    )
    actions = trust.add_subparsers(dest="trust_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="every trusted signer: name, kind, fingerprint")
    listing.add_argument("--json", action="store_true", help="print a JSON list")
    add_home_option(listing)
    listing.set_defaults(func=_list)

    add = actions.add_parser(
        "add", help="trust the signer of a model file, or a raw key",
        description="Trust the key that signed MODEL.dpm, or a base64 key given with --key. Compare the printed "
                    "fingerprint with the one the sender reads to you (phone, in person) before relying on it.",
    )
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("model", type=Path, nargs="?", metavar="MODEL.dpm", help="a model package signed by the key")
    what.add_argument("--key", metavar="BASE64", help="the signer's raw Ed25519 public key, base64 (44 characters)")
    add.add_argument("--name", required=True, help="who the signer is, e.g. \"City Eye Clinic\"")
    add.add_argument("--fingerprint", metavar="FINGERPRINT",
                     help="the fingerprint the sender gave you: the key is added only if it matches")
    add_home_option(add)
    add.set_defaults(func=_add)

    remove = actions.add_parser("remove", help="stop trusting a key you added")
    remove.add_argument("fingerprint", metavar="FINGERPRINT",
                        help="its fingerprint, or its first 8 or more hex digits (spaces optional)")
    add_home_option(remove)
    remove.set_defaults(func=_remove)


def _store(args: argparse.Namespace):
    from core.models.trust import TrustStore

    return TrustStore(home_of(args))


def _list(args: argparse.Namespace) -> int:
    signers = _store(args).list()
    if args.json:
        print(json.dumps([{"name": s.name, "kind": s.kind, "fingerprint": s.fingerprint, "source": s.source,
                           "added": s.added} for s in signers], indent=2))
        return 0
    if not signers:
        print("No trusted signers yet: this hospital has no identity key, joined no federation and added no key.")
        return 0
    for signer in signers:
        print(f"{signer.name}  ({signer.kind}{', added ' + signer.added if signer.added else ''})")
        print(f"    {signer.fingerprint}")
    return 0


def _add(args: argparse.Namespace) -> int:
    from core.errors import ConfigError
    from core.models.trust import decode_public_key, fingerprint_hex

    store = _store(args)
    if args.model is not None:
        from core.models.package import read_package

        # Only a package whose signature verifies tells which key signed it.
        package = read_package(args.model, require_signature=True)
        key, source = package.signer_public_key, str(Path(args.model).resolve())
    else:
        key, source = decode_public_key(args.key), "--key"
    from core.signing import fingerprint

    if args.fingerprint is not None and fingerprint_hex(args.fingerprint) != fingerprint_hex(fingerprint(key)):
        raise ConfigError(f"The key's fingerprint is {fingerprint(key)}, not the {args.fingerprint.strip()} you were "
                          "given: nothing was added. Check with the sender.")
    signer = store.add(key, args.name, source)
    print(f"Trusted {signer.name}: models signed by this key now count as verified here.")
    print(f"Fingerprint: {signer.fingerprint}")
    if args.fingerprint is None:
        print("Compare it with the fingerprint the sender reads to you (phone, in person); if they differ, run "
              f"`dopamine trust remove {signer.fingerprint.replace(' ', '')[:16]}` at once.")
    return 0


def _remove(args: argparse.Namespace) -> int:
    signer = _store(args).remove(args.fingerprint)
    print(f"No longer trusted: {signer.name} ({signer.fingerprint}).")
    return 0
