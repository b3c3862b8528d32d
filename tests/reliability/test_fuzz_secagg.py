"""Fuzzing the secure-aggregation wire messages (core.secagg.messages) on both sides.

- The bytes of every message type, mutated, and their JSON headers with fields set to hostile values,
  through ``parse_message``.
- The coordinator's side: a fresh round brought to each step, then a mutated hospital message for that
  step through ``SecureAggregation.receive`` (what the coordinator does with a POSTed body).
- The hospital's side: a fresh round brought to each step, then a mutated coordinator answer (key
  roster, share bundle, survivor set, unmask request) through the hospital's state machine.

Only success, a SecAggError or a Refused (4xx) may come out, each in one line.
"""

import json
import struct

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from reliability_kit import corpus_params, fuzz_settings, mutate, run_case

from core.federation.aggregation import SecureAggregation
from core.federation.protocol import Step
from core.secagg import RoundParams, SecAggClient, fixed_point_for_bound, parse_message
from core.secagg.crypto import ed25519_public_bytes
from core.secagg.messages import MAGIC

IDS = ["h01", "h02", "h03"]
LENGTH = 16
STEPS = ("advertise", "share", "mask", "consistency", "unmask")


class Round:
    """A genuine 3-hospital round run in memory up to ``until`` (the messages of each step kept)."""

    def __init__(self, until: str = "unmask", keys: dict | None = None) -> None:
        self.keys = keys or {h: Ed25519PrivateKey.generate() for h in IDS}
        self.peers = {h: ed25519_public_bytes(k) for h, k in self.keys.items()}
        self.params = RoundParams("fuzz:1:1", 3, LENGTH, fixed_point_for_bound(1.0, 3), colluders=1)
        self.aggregation = SecureAggregation(self.params, self.peers)
        self.server = self.aggregation.server
        self.clients = {h: SecAggClient(self.params, h, self.keys[h], self.peers) for h in IDS}
        self.sent: dict[str, dict[str, bytes]] = {}  # step -> hospital -> its message
        self.answers: dict[str, dict[str, bytes]] = {}  # step -> hospital -> the coordinator's answer
        for step in STEPS[:STEPS.index(until)]:
            self._step(step)

    def make(self, step: str, h: str) -> bytes:
        """Hospital ``h``'s genuine message for ``step`` (the coordinator has not received it)."""
        client = self.clients[h]
        previous = self.answers[STEPS[STEPS.index(step) - 1]][h] if step != "advertise" else b""
        if step == "advertise":
            message = client.advertise()
        elif step == "share":
            message = client.share_keys(parse_message(previous))
        elif step == "mask":
            message = client.mask_input(parse_message(previous), np.linspace(-0.5, 0.5, LENGTH))
        elif step == "consistency":
            message = client.sign_survivors(parse_message(previous))
        else:
            message = client.unmask(parse_message(previous))
        return message.to_bytes()

    def _step(self, step: str) -> None:
        made = {}
        for h in IDS:
            made[h] = self.make(step, h)
            self.aggregation.receive(Step(step), h, made[h])
        self.sent[step] = made
        if step != "unmask":
            closed = self.aggregation.close(Step(step))
            self.answers[step] = {h: closed.get(h, closed.get("*")) for h in IDS}

    def client_takes(self, step: str, answer: bytes, hospital: str = "h01"):
        """The hospital's next step with the coordinator's ``answer`` to ``step``."""
        client = self.clients[hospital]
        message = parse_message(answer)
        if step == "advertise":
            return client.share_keys(message)
        if step == "share":
            return client.mask_input(message, np.zeros(LENGTH))
        if step == "mask":
            return client.sign_survivors(message)
        return client.unmask(message)


@pytest.fixture(scope="module")
def genuine():
    """One message of every type, from one genuine round (the seeds of the byte-level fuzzing)."""
    full = Round("unmask")
    full._step("unmask")
    seeds = [m for step in STEPS for m in full.sent[step].values()]
    seeds += [a for step in STEPS[:-1] for a in full.answers[step].values()]
    return seeds


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
                  st.sampled_from(["h01", "h02", "coordinator", "fuzz:1:1", "uint32", "uint64", "AAAA", "",
                                   "A" * 44, "A" * 88, "=" * 8, "h01/../h02", "h" * 65]))
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(["h01", "h02", "h03", "x", ""]), inner, max_size=4),
                      max_leaves=10)


def _repack(data: bytes, draw) -> bytes:
    (length,) = struct.unpack("<I", data[4:8])
    header = json.loads(data[8:8 + length])
    payload = data[8 + length:]
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(header) + ["extra"]))
        if draw(st.integers(0, 4)) == 0:
            header.pop(key, None)
        elif isinstance(header.get(key), dict) and header[key] and draw(st.booleans()):
            inner = draw(st.sampled_from(sorted(header[key])))
            header[key][inner] = draw(_value)
        elif isinstance(header.get(key), list) and header[key] and draw(st.booleans()):
            header[key][draw(st.integers(0, len(header[key]) - 1))] = draw(_value)
        else:
            header[key] = draw(_value)
    text = json.dumps(header, allow_nan=True).encode()
    if draw(st.integers(0, 3)) == 0:
        payload = mutate(payload, draw, 2)
    return MAGIC + struct.pack("<I", len(text)) + text + payload


@st.composite
def hostile(draw, data: bytes) -> bytes:
    return _repack(data, draw) if draw(st.booleans()) else mutate(data, draw)


def test_wire_bytes_parse_or_are_refused_in_one_line(genuine):
    @fuzz_settings("secagg", share=0.4)
    @given(st.data())
    def fuzz(data):
        message = data.draw(hostile(data.draw(st.sampled_from(genuine))))
        run_case("secagg", lambda: parse_message(message), data=message, suffix=".msg")

    fuzz()


@pytest.fixture(scope="module")
def rounds():
    """A fresh round brought to each step, made on demand (a case may change the state it gets)."""
    keys = {h: Ed25519PrivateKey.generate() for h in IDS}
    return lambda step: Round(step, keys)


def test_the_coordinator_takes_or_refuses_each_hospital_message(rounds):
    @fuzz_settings("secagg", share=0.3)
    @given(st.data())
    def fuzz(data):
        step = data.draw(st.sampled_from(STEPS))
        live = rounds(step)
        sender = data.draw(st.sampled_from(IDS))
        body = data.draw(hostile(live.make(step, sender)))
        run_case("secagg", lambda: live.aggregation.receive(Step(step), sender, body), data=body, suffix=f".{step}")

    fuzz()


def test_the_hospital_takes_or_refuses_each_coordinator_answer(rounds):
    @fuzz_settings("secagg", share=0.3)
    @given(st.data())
    def fuzz(data):
        step = data.draw(st.sampled_from(STEPS[:-1]))
        live = rounds(STEPS[STEPS.index(step) + 1])  # the coordinator has answered ``step``
        answer = data.draw(hostile(live.answers[step]["h01"]))
        run_case("secagg", lambda: live.client_takes(step, answer), data=answer, suffix=f".answer-{step}")

    fuzz()


@pytest.mark.parametrize("path", corpus_params("secagg"))
def test_the_secagg_corpus(rounds, path):
    data = path.read_bytes()
    kind = path.suffix.lstrip(".")
    if kind.startswith("answer-"):
        step = kind.removeprefix("answer-")
        live = rounds(STEPS[STEPS.index(step) + 1])
        run_case("secagg", lambda: live.client_takes(step, data), data=data, suffix=path.suffix)
    elif kind in STEPS:
        live = rounds(kind)
        run_case("secagg", lambda: live.aggregation.receive(Step(kind), "h01", data), data=data, suffix=path.suffix)
    else:
        run_case("secagg", lambda: parse_message(data), data=data, suffix=path.suffix)
