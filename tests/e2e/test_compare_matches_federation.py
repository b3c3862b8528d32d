"""`dopamine compare` measures the product: its FSCDP run gives the same model as a real federation.

Two hospitals join a real coordinator over HTTPS (loopback, in threads), and `compare` trains FSCDP on
the same two hospital folders. The DP randomness (Poisson sampling, flips, noise) of both comes from the
same per-(hospital, round) keys, which only this test can set: fscdp_step is wrapped here. Everything
else, the secure aggregation included, runs as it does for hospitals.
"""

import hashlib
import threading
from collections import defaultdict

import pytest
import torch

from core.compare.collection import load_collection
from core.compare.modes import CompareData, ModeSettings, train_mode
from core.compare.splits import split_folders
from core.data.preprocess import Preprocessing
from core.federation import local_work
from core.federation.layout import InitConfig
from core.federation.simulate import free_port
from core.models.package import read_package
from core.privacy.noise import DPRandom

ROUNDS = 3
# FSCDP's coordinator optimizer takes the plan's lr and momentum (it carries the DP-SGD step).
PLAN = dict(sample_rate=0.5, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-3, lr=0.3, momentum=0.9,
            server_lr_schedule="cosine")


def key(hospital: str, round: int) -> bytes:
    return hashlib.sha256(f"compare-vs-federation|{hospital}|{round}".encode()).digest()


def federation_model(tmp_path, data, threaded_federation, monkeypatch) -> dict[str, torch.Tensor]:
    real_step = local_work.fscdp_step
    rounds_seen = defaultdict(int)

    def keyed_step(*args, rng=None, **kwargs):
        # The harness names each hospital's thread; its DP step runs on that hospital's compute thread,
        # named "<hospital's thread>/compute_0" (core.federation.client).
        hospital = threading.current_thread().name.split("/")[0]
        rounds_seen[hospital] += 1
        return real_step(*args, rng=DPRandom(key(hospital, rounds_seen[hospital])), **kwargs)

    monkeypatch.setattr(local_work, "fscdp_step", keyed_step)
    results = threaded_federation(InitConfig(
        folder=tmp_path / "fed", name="same", mode="fscdp", rounds=ROUNDS, hospitals=2, hosts=["127.0.0.1"],
        port=free_port(), image_size=32, key_phase_timeout_s=10.0, compute_phase_timeout_s=60.0, seed=0, **PLAN),
        data)
    assert dict(rounds_seen) == {"h000": ROUNDS, "h001": ROUNDS}  # one keyed step per hospital and round
    package = read_package(results[0].model_path, require_signature=False)
    return package.state_dict


def compare_model(data) -> dict[str, torch.Tensor]:
    spec = Preprocessing(size=32)
    collection = load_collection(data, labels_csv=None, by_folder=True, spec=spec, cache_dir=None)
    split = split_folders(collection.groups)
    compare_data = CompareData(collection.images, collection.labels, [torch.tensor(h) for h in split.hospitals],
                               torch.tensor(split.test), spec, collection.classes)
    settings = ModeSettings(mode="fscdp", lr=PLAN["lr"], momentum=PLAN["momentum"], rounds=ROUNDS,
                            sample_rate=PLAN["sample_rate"], noise_multiplier=PLAN["noise_multiplier"],
                            max_grad_norm=PLAN["max_grad_norm"], delta=PLAN["delta"],
                            server_lr_schedule=PLAN["server_lr_schedule"])
    trained = train_mode(settings, compare_data, seed=0,
                         rng_factory=lambda hospital, round: DPRandom(key(hospital, round)))
    return {name: tensor.detach().clone() for name, tensor in trained.model.state_dict().items()}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from core.data.synthetic import write_demo_data

    root = tmp_path_factory.mktemp("same-data")
    write_demo_data(root, hospitals=2, per_hospital=16, test_images=6, size=40, seed=11)
    return root


def test_compare_fscdp_is_the_federations_model(tmp_path, data, threaded_federation, monkeypatch):
    compared = compare_model(data)
    federated = federation_model(tmp_path, data, threaded_federation, monkeypatch)
    assert compared.keys() == federated.keys()
    initial = {}
    torch.manual_seed(0)
    from core.models.registry import build_model

    for name, tensor in build_model("small_cnn", 5).state_dict().items():
        initial[name] = tensor
    moved = 0
    for name, tensor in compared.items():
        # The coordinator keeps float64 weights and ships float32; compare copies into the float32 model.
        torch.testing.assert_close(federated[name], tensor, rtol=0, atol=1e-6, msg=name)
        moved += int(not torch.equal(tensor, initial[name]))
    assert moved > 0  # training changed the model: the match is not two untouched initialisations


def test_different_keys_give_a_different_model(data):
    """The comparison above can fail: change one hospital's DP randomness and the models differ."""
    spec = Preprocessing(size=32)
    collection = load_collection(data, labels_csv=None, by_folder=True, spec=spec, cache_dir=None)
    split = split_folders(collection.groups)
    compare_data = CompareData(collection.images, collection.labels, [torch.tensor(h) for h in split.hospitals],
                               torch.tensor(split.test), spec, collection.classes)
    settings = ModeSettings(mode="fscdp", lr=0.3, rounds=1, sample_rate=0.5, delta=1e-3)
    first = train_mode(settings, compare_data, 0, rng_factory=lambda h, r: DPRandom(key(h, r))).model
    other = train_mode(settings, compare_data, 0, rng_factory=lambda h, r: DPRandom(key(h + "x", r))).model
    assert any(not torch.equal(a, b) for a, b in zip(first.parameters(), other.parameters(), strict=True))
