"""Fuzzing the model package (.dpm, core.models.package) the way the app opens one: read it (strictly, and
allowing an unverified signature), load the model, show its card and predict one small image.

Inputs: zips rebuilt with missing, extra, duplicate and path-traversal members and other compressions;
zip bombs; declared sizes that lie; cards with hostile field values (metrics, preprocessing, classes);
safetensors headers with wrong dtypes, shapes and offsets; a pickle where the weights belong (it must
never be unpickled); signature files mutated; raw byte mutations of a genuine package."""

import base64
import io
import json
import pickle
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from reliability_kit import corpus_params, fuzz_settings, mutate, run_case

from core.models import build_model
from core.models.package import CARD, SIGNATURE, WEIGHTS, ModelCard, read_package, write_package
from core.signing import generate_private_key

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # zipfile warns about duplicate names

GOOD_CARD = dict(
    architecture="small_cnn", classes=["No DR", "Mild", "Moderate", "Severe", "Proliferative DR"],
    preprocessing={"size": 32, "resize": 36, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    mode="fscdp", epsilon=2.5, delta=1e-5, accountant="rdp", noise_multiplier=1.1, sample_rate=0.02,
    max_grad_norm=1.0, steps=120, rounds=120, hospitals=3, image_counts={"h01": 200, "h02": 180},
    metrics={"evaluation": {"accuracy": 0.6, "kappa": 0.5, "images": 20,
                            "confusion_matrix": [[4, 0, 0, 0, 0]] * 5}},
    created="2026-05-01T12:00:00+00:00", software_version="0.1.0", description="fuzz seed",
)
TRAVERSAL = ["../weights.safetensors", "/card.json", "a/../../card.json", "..\\signature.json", "C:/x", "card.json/",
             "weights.safetensors\x00.txt", "./card.json", "CARD.JSON", " card.json", "card.json ", "\u2024card.json"]


class _Boom:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        import os

        return (os.system, ("echo unpickled > /dev/null",))


@pytest.fixture(scope="module")
def seed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dpm")
    torch.manual_seed(0)
    path = folder / "seed.dpm"
    write_package(path, build_model("small_cnn", 5).state_dict(), ModelCard(**GOOD_CARD), generate_private_key())
    data = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    return {"folder": folder, "data": data, "members": members, "key": generate_private_key()}


def open_like_the_app(path: Path):
    """What the Models page and the viewer do with a file: the strict read, then load, card, predict."""
    from core.inference.card import card_fields, evaluation_rows
    from core.inference.predictor import open_model

    try:
        read_package(path)
    except Exception as exc:  # noqa: BLE001 - checked like every outcome: it must be a DopamineError
        from core.errors import DopamineError, SignatureError

        if not isinstance(exc, DopamineError):
            raise
        if not isinstance(exc, SignatureError):
            raise  # malformed: the lenient read below must refuse it too, so stop here
    predictor = open_model(path, allow_unverified=True)
    # A card that opens may not make one prediction allocate gigabytes (every image is resized to it).
    assert predictor.spec.resize_to <= 4096, f"the card makes every image {predictor.spec.resize_to} px a side"
    card_fields(predictor.package, predictor.signer)
    evaluation_rows(predictor.card)
    predictor.predict_image(Image.new("RGB", (40, 30), (120, 40, 20)))
    return predictor


def _zip(entries, methods=None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index, (name, content) in enumerate(entries):
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = (methods or {}).get(index, zipfile.ZIP_DEFLATED)
            archive.writestr(info, content)
    return buffer.getvalue()


def _resign(members: dict, key) -> dict:
    """Sign mutated members anew, so the mutation reaches the parsers behind the signature check."""
    from core.models.package import signed_message
    from core.signing import public_key_bytes, sign

    record = {"algorithm": "ed25519", "public_key": base64.b64encode(public_key_bytes(key)).decode(),
              "signature": base64.b64encode(sign(key, signed_message(members[WEIGHTS], members[CARD]))).decode()}
    return {**members, SIGNATURE: json.dumps(record).encode()}


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                       st.text(max_size=20))
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=10),
                                                                                              inner, max_size=6),
                     max_leaves=20)
# Values worth trying in particular fields of the card.
CARD_VALUES = {
    "architecture": ["small_cnn", "resnet18_gn", "squeezenet1_1", "vit", "", None],
    "classes": [["a"], ["a", "a"], ["a", "b"], ["x"] * 1001, [1, 2], "ab", None, ["No DR", ""], ["a" * 201, "b"]],
    "preprocessing": [{"size": 100000}, {"size": 32, "resize": 10**9}, {"size": 7}, {"size": True}, {"size": 32.0},
                      {"mean": [float("inf"), 0, 0]}, {"std": [0, 1, 1]}, {"std": [1e-300, 1, 1]}, {"mean": "rgb"},
                      {"fundus_crop": 1}, {"crop_margin": 0.9}, {"local_contrast": True, "size": 32},
                      {"size": 32, "fundus_crop": True, "crop_margin": 0.5}, {"bogus": 1}, [], None],
    "metrics": [{"evaluation": {"accuracy": 2.0, "confusion_matrix": [[1]]}},
                {"evaluation": {"accuracy": 0.5, "confusion_matrix": [[-1, 0], [0, 10**30]]}},
                {"evaluation": {"accuracy": 0.5, "confusion_matrix": [[1, 2, 3, 4, 5]] * 7, "images": -3}},
                {"evaluation": {"accuracy": 0.5, "confusion_matrix": "x", "kappa": "y", "test_set": {"described": 5}}},
                {"evaluation": {"accuracy": 0.5, "reference": {"colour": "x"}}},
                {"validation": {"accuracy": float("1e308"), "images": 0}}, {"accuracy": -1}, {"accuracy": True}, []],
    "epsilon": [-1, 1e308, "2", None, float("1e308") * 10], "delta": [0, 1, 2, -1e-9, None, "x"],
    "mode": ["c", "fscdp", "x", None], "accountant": ["rdp", "prv", "gdp", None],
    "created": ["2026-13-01", "x", "", 5, "2026-05-01"], "image_counts": [{"a": -1}, {"a": 2**80}, [], {"a": 1.5}],
    "schema_version": [0, 2, 99, "1", None, True], "steps": [-1, 2**80, 1.5], "description": ["x" * 10001, 5],
}


@st.composite
def cards(draw, members: dict) -> bytes:
    card = json.loads(members[CARD])
    for name in draw(st.lists(st.sampled_from(sorted(CARD_VALUES)), min_size=1, max_size=3, unique=True)):
        card[name] = draw(st.one_of(st.sampled_from(CARD_VALUES[name]), _json))
    if draw(st.integers(0, 5)) == 0:
        card.pop(draw(st.sampled_from(sorted(card))))
    if draw(st.integers(0, 5)) == 0:
        card[draw(st.text(max_size=8))] = draw(_json)
    text = json.dumps(card, allow_nan=True)
    if draw(st.integers(0, 7)) == 0:
        text = draw(st.sampled_from(['{"a": 1, "a": 2}', "[" * 100000, '{"epsilon": NaN}', "\ud800", ""]))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def weights(draw, members: dict) -> bytes:
    data = members[WEIGHTS]
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]
    kind = draw(st.sampled_from(("header", "header", "pickle", "length", "bytes")))
    if kind == "pickle":
        return pickle.dumps({"conv.weight": _Boom()})
    if kind == "length":
        return struct.pack("<Q", draw(st.sampled_from((0, 1, length - 1, length + 1, 2**63, 2**64 - 1)))) + data[8:]
    if kind == "bytes":
        return mutate(data, draw)
    names = sorted(k for k in header if k != "__metadata__")
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names))
        field = draw(st.sampled_from(("dtype", "shape", "data_offsets", "drop", "rename", "metadata")))
        if name not in header:  # dropped or renamed by an earlier change
            continue
        if field == "dtype":
            header[name]["dtype"] = draw(st.sampled_from(("F16", "F64", "I64", "U8", "BOOL", "BF16", "F8_E4M3", "X")))
        elif field == "shape":
            header[name]["shape"] = draw(st.lists(st.integers(-1, 2**40), max_size=5))
        elif field == "data_offsets":
            header[name]["data_offsets"] = draw(st.lists(st.integers(-1, 2**64), min_size=0, max_size=3))
        elif field == "drop":
            header.pop(name)
        elif field == "rename":
            header[draw(st.text(max_size=12))] = header.pop(name)
        else:
            header["__metadata__"] = draw(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3))
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + body


@st.composite
def packages(draw, seed) -> bytes:
    members = dict(seed["members"])
    kind = draw(st.sampled_from(("card", "card", "weights", "weights", "signature", "layout", "bytes")))
    if kind == "card":
        members[CARD] = draw(cards(members))
    elif kind == "weights":
        members[WEIGHTS] = draw(weights(members))
    elif kind == "signature":
        members[SIGNATURE] = mutate(members[SIGNATURE], draw)
    elif kind == "bytes":
        return mutate(seed["data"], draw)
    if kind in ("card", "weights") and draw(st.booleans()):
        members = _resign(members, seed["key"])
    entries = list(members.items())
    methods = {}
    if kind == "layout":
        for _ in range(draw(st.integers(1, 3))):
            change = draw(st.sampled_from(("drop", "duplicate", "traversal", "extra", "method")))
            if change == "drop" and entries:
                entries.pop(draw(st.integers(0, len(entries) - 1)))
            elif change == "duplicate" and entries:
                name, content = draw(st.sampled_from(entries))
                entries.insert(draw(st.integers(0, len(entries))), (name, mutate(content, draw, 1)))
            elif change == "traversal" and entries:
                index = draw(st.integers(0, len(entries) - 1))
                entries[index] = (draw(st.sampled_from(TRAVERSAL)), entries[index][1])
            elif change == "extra":
                entries.append((draw(st.sampled_from(TRAVERSAL + ["extra.bin", "__init__.py"])), b"x" * 10))
            elif change == "method" and entries:
                methods[draw(st.integers(0, len(entries) - 1))] = draw(st.sampled_from(
                    (zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)))
    data = _zip(entries, methods)
    return mutate(data, draw, 2) if draw(st.integers(0, 4)) == 0 else data


def check(folder: Path, data: bytes):
    path = folder / "model.dpm"
    path.write_bytes(data)
    return run_case("dpm", lambda: open_like_the_app(path), data=data, suffix=".dpm")


def test_packages_open_or_are_refused_in_one_line(seed):
    @fuzz_settings("dpm")
    @given(packages(seed))
    def fuzz(data):
        check(seed["folder"], data)

    fuzz()


def test_the_genuine_seed_opens(seed):
    """The fuzzer's seed is a valid package (else every mutation would be refused for the wrong reason)."""
    assert check(seed["folder"], seed["data"]).signature_verified


@pytest.mark.parametrize("path", corpus_params("dpm"))
def test_the_dpm_corpus(seed, path):
    check(seed["folder"], path.read_bytes())
