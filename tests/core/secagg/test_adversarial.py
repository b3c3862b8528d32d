"""A curious coordinator, replays, forgeries and wrong rounds are refused without revealing anything."""

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.errors import SecAggAborted, SecAggError
from core.secagg import SurvivorSet, UnmaskRequest
from core.secagg.crypto import sign


def _flip(data: bytes, index: int = 20) -> bytes:
    return data[:index] + bytes([data[index] ^ 1]) + data[index + 1 :]


# -- the coordinator asks for both shares of one hospital -----------------------------------------


def test_listing_a_peer_as_both_dropped_and_alive_is_refused(manual_round):
    r = manual_round().advertise().share().mask(ids=["h000", "h001", "h002"])
    assert r.survivor_set.dropped == ("h003",)
    client = r.clients["h000"]
    greedy = SurvivorSet(r.params.round_id, survivors=("h000", "h001", "h002", "h003"), dropped=("h003",))
    with pytest.raises(SecAggError, match="both dropped and alive"):
        client.sign_survivors(greedy)
    # The honest set is still signed and, once m survivors signed it, answered: the key share for
    # the dropped peer, seed shares for the rest.
    r.consistency()
    answer = client.unmask(r.request)
    assert set(answer.key_shares) == {"h003"} and set(answer.seed_shares) == {"h000", "h001", "h002"}
    # One answer per round: asking again with the lists swapped gets nothing.
    swapped = UnmaskRequest(r.params.round_id, ("h000", "h001", "h003"), ("h002",), r.request.signatures)
    with pytest.raises(SecAggError, match="out of order"):
        client.unmask(swapped)


@pytest.mark.parametrize(
    ("survivors", "dropped", "match"),
    [
        (("h001", "h002", "h003"), ("h000",), "lists h000 as dropped"),  # the asker itself
        (("h000", "h001", "h002"), (), "disagree"),  # h003 left out: its masks would be unaccounted
        (("h000", "h001", "h002"), ("h003", "h999"), "not in this round"),
    ],
)
def test_inconsistent_survivor_sets_are_refused(manual_round, survivors, dropped, match):
    r = manual_round().advertise().share().mask(ids=["h000", "h001", "h002"])
    with pytest.raises(SecAggError, match=match):
        r.clients["h000"].sign_survivors(SurvivorSet(r.params.round_id, survivors, dropped))
    assert r.clients["h000"].phase == "masked"  # nothing was signed


def test_client_refuses_to_sign_below_threshold(manual_round):
    r = manual_round(k=5, threshold=3).advertise().share().mask(ids=["h000", "h001", "h002"])
    with pytest.raises(SecAggAborted):
        r.clients["h000"].sign_survivors(SurvivorSet(r.params.round_id, ("h000", "h001"), ("h002", "h003", "h004")))


def test_unmask_needs_m_survivor_signatures_on_the_signed_set(manual_round):
    r = manual_round(k=5, threshold=3).advertise().share().mask()
    signatures = {h: r.clients[h].sign_survivors(r.survivor_set).signature for h in ("h000", "h001")}
    short = UnmaskRequest(r.params.round_id, r.survivor_set.survivors, r.survivor_set.dropped, signatures)
    with pytest.raises(SecAggError, match="only 2 survivors signed"):
        r.clients["h000"].unmask(short)
    # A forged third signature does not count.
    forged = {**signatures, "h002": sign(Ed25519PrivateKey.generate(), "anything")}
    with pytest.raises(SecAggError, match="only 2 survivors signed"):
        r.clients["h000"].unmask(dataclasses.replace(short, signatures=forged))
    assert r.clients["h000"].phase == "signed"


# -- replays ---------------------------------------------------------------------------------------


def test_replayed_messages_are_refused_at_every_step(manual_round):
    r = manual_round()
    advert = r.clients["h000"].advertise()
    r.server.receive_advertise(advert)
    with pytest.raises(SecAggError, match="repeated"):
        r.server.receive_advertise(advert)
    for h in ("h001", "h002", "h003"):
        r.server.receive_advertise(r.clients[h].advertise())
    r.roster = r.server.close_advertise()
    with pytest.raises(SecAggError, match="step"):  # and after the step closed
        r.server.receive_advertise(advert)
    shares = r.clients["h000"].share_keys(r.roster)
    r.server.receive_shares(shares)
    with pytest.raises(SecAggError, match="repeated"):
        r.server.receive_shares(shares)
    r.share(ids=["h001", "h002", "h003"])
    r.mask(ids=["h000", "h001", "h002", "h003"])
    # Too late and repeated: the running sum must not change.
    with pytest.raises(SecAggError):
        r.server.receive_masked_input(r.masked["h000"])
    signature = r.clients["h000"].sign_survivors(r.survivor_set)
    r.server.receive_survivor_signature(signature)
    with pytest.raises(SecAggError, match="repeated"):
        r.server.receive_survivor_signature(signature)
    r.consistency(ids=["h001", "h002", "h003"])
    answer = r.clients["h000"].unmask(r.request)
    r.server.receive_unmask(answer)
    with pytest.raises(SecAggError, match="repeated"):
        r.server.receive_unmask(answer)
    for h in ("h001", "h002"):
        r.server.receive_unmask(r.clients[h].unmask(r.request))
    total = r.server.finish().ring_sum
    expected = sum(r.inputs[h].astype(np.uint64) for h in r.ids).astype(np.uint32)
    assert np.array_equal(total, expected)


def test_repeated_masked_input_does_not_enter_the_sum(manual_round):
    r = manual_round().advertise().share()
    first = r.clients["h000"].mask_encoded(r.bundles["h000"], r.inputs["h000"])
    r.server.receive_masked_input(first)
    before = r.server._sum.copy()
    with pytest.raises(SecAggError, match="repeated"):
        r.server.receive_masked_input(first)
    assert np.array_equal(r.server._sum, before)


def test_messages_from_an_earlier_round_are_refused(manual_round):
    old = manual_round(round_id="fed:round:1").advertise().share()
    old.mask()
    new = manual_round(round_id="fed:round:2", keys=old.keys)
    with pytest.raises(SecAggError, match="round"):
        new.server.receive_advertise(old.adverts["h000"])
    # Even with the round id rewritten, the signed parameter digest and signature give it away.
    with pytest.raises(SecAggError):
        new.server.receive_advertise(dataclasses.replace(old.adverts["h000"], round_id="fed:round:2"))
    new.advertise().share()
    with pytest.raises(SecAggError, match="round"):
        new.server.receive_masked_input(old.masked["h000"])
    with pytest.raises(SecAggError):
        new.server.receive_masked_input(dataclasses.replace(old.masked["h000"], round_id="fed:round:2"))
    with pytest.raises(SecAggError, match="round"):
        new.clients["h000"].mask_encoded(old.bundles["h000"], new.inputs["h000"])
    # Old shares under the new round id: wrong keys, wrong associated data.
    with pytest.raises(SecAggError, match="authentication"):
        new.clients["h000"].mask_encoded(
            dataclasses.replace(old.bundles["h000"], round_id="fed:round:2"), new.inputs["h000"]
        )


# -- forgeries -------------------------------------------------------------------------------------


def test_forged_advert_signature_is_refused_by_server_and_hospitals(manual_round):
    r = manual_round()
    advert = r.clients["h001"].advertise()
    forged = dataclasses.replace(
        advert, signature=sign(Ed25519PrivateKey.generate(), *advert.signed_fields())
    )
    with pytest.raises(SecAggError, match="signature"):
        r.server.receive_advertise(forged)
    # A coordinator that swaps in its own keys for h001 (to read h001's shares) is caught by h000.
    r2 = manual_round().advertise()
    tampered = dataclasses.replace(r2.roster.adverts[1], enc_public=r2.roster.adverts[2].enc_public)
    roster = dataclasses.replace(r2.roster, adverts=(r2.roster.adverts[0], tampered, *r2.roster.adverts[2:]))
    with pytest.raises(SecAggError, match="signature"):
        r2.clients["h000"].share_keys(roster)
    assert r2.clients["h000"].phase == "advertised"


def test_unknown_sender_is_refused(manual_round):
    r = manual_round()
    outsider = manual_round(k=5).clients["h004"].advertise()
    with pytest.raises(SecAggError, match="participant|enrolled"):
        r.server.receive_advertise(outsider)


def test_forged_shares_masked_input_and_answers_are_refused(manual_round):
    r = manual_round().advertise()
    shares = r.clients["h000"].share_keys(r.roster)
    recipient = next(iter(shares.ciphertexts))
    forged = dataclasses.replace(
        shares, ciphertexts={**shares.ciphertexts, recipient: _flip(shares.ciphertexts[recipient])}
    )
    with pytest.raises(SecAggError, match="signature"):
        r.server.receive_shares(forged)
    r.server.receive_shares(shares)
    for h in ("h001", "h002", "h003"):
        r.server.receive_shares(r.clients[h].share_keys(r.roster))
    r.bundles = r.server.close_sharing()

    masked = r.clients["h000"].mask_encoded(r.bundles["h000"], r.inputs["h000"])
    flipped = masked.vector.copy()
    flipped[3] ^= 1
    with pytest.raises(SecAggError, match="signature"):
        r.server.receive_masked_input(dataclasses.replace(masked, vector=flipped))
    r.server.receive_masked_input(masked)
    for h in ("h001", "h002", "h003"):
        r.server.receive_masked_input(r.clients[h].mask_encoded(r.bundles[h], r.inputs[h]))
    r.survivor_set = r.server.close_masking()
    wrong = r.clients["h000"].sign_survivors(r.survivor_set)
    with pytest.raises(SecAggError, match="signature"):
        r.server.receive_survivor_signature(dataclasses.replace(wrong, sender="h001"))
    r.server.receive_survivor_signature(wrong)
    r.consistency(ids=["h001", "h002", "h003"])

    answer = r.clients["h000"].unmask(r.request)
    owner = next(iter(answer.seed_shares))
    altered = dataclasses.replace(
        answer, seed_shares={**answer.seed_shares, owner: answer.seed_shares[owner] ^ 1}
    )
    with pytest.raises(SecAggError, match="signature"):
        r.server.receive_unmask(altered)


def test_tampered_ciphertext_in_bundle_is_refused(manual_round):
    r = manual_round().advertise().share()
    bundle = r.bundles["h000"]
    sender = next(iter(bundle.ciphertexts))
    bad = dataclasses.replace(
        bundle, ciphertexts={**bundle.ciphertexts, sender: _flip(bundle.ciphertexts[sender], 30)}
    )
    with pytest.raises(SecAggError, match="authentication"):
        r.clients["h000"].mask_encoded(bad, r.inputs["h000"])
    with pytest.raises(SecAggError, match="addressed to"):
        r.clients["h000"].mask_encoded(r.bundles["h001"], r.inputs["h000"])
    # Still usable with the genuine bundle.
    r.clients["h000"].mask_encoded(bundle, r.inputs["h000"])


def test_a_lying_hospital_share_aborts_the_round_without_release(manual_round):
    """A hospital that signs a wrong share cannot corrupt the sum: the commitment check aborts."""
    r = manual_round().advertise().share().mask().consistency()
    liar = r.clients["h000"].unmask(r.request)
    owner = "h002"
    lie = dataclasses.replace(liar, seed_shares={**liar.seed_shares, owner: (liar.seed_shares[owner] + 1)})
    lie = dataclasses.replace(lie, signature=sign(r.keys[0], *lie.signed_fields()))
    r.server.receive_unmask(lie)
    for h in ("h001", "h002"):  # exactly the threshold: the lie is needed
        r.server.receive_unmask(r.clients[h].unmask(r.request))
    with pytest.raises(SecAggAborted, match="commitment"):
        r.server.finish()
    assert r.server.phase == "aborted" and r.server._sum is None


def test_calls_out_of_order_are_refused(manual_round):
    r = manual_round()
    with pytest.raises(SecAggError, match="cannot finish"):
        r.server.finish()
    with pytest.raises(SecAggError, match="out of order"):
        r.clients["h000"].unmask(UnmaskRequest(r.params.round_id, ("h000",), (), {}))
    r.advertise()
    with pytest.raises(SecAggError, match="already advertised"):
        r.clients["h000"].advertise()
    with pytest.raises(SecAggError, match="expected MaskedInput"):
        r.server.receive_masked_input(r.clients["h000"].share_keys(r.roster))
    for early in (r.server.close_advertise, r.server.close_masking, r.server.close_consistency, r.server.finish):
        with pytest.raises(SecAggError, match="step"):
            early()
    assert r.server.phase == "sharing"  # none of that disturbed the round
