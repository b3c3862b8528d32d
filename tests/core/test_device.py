"""`--device auto|cpu|cuda` (core.device) in training, joining, simulating and comparing.

This machine has no CUDA GPU: ``auto`` must resolve to the CPU and give exactly the CPU results, ``cuda``
must stop with one line that says what to choose instead, and with a GPU pretended (torch.cuda.is_available
patched) ``auto`` must pick cuda and every entry point must hand that device to the code that computes.
The DP randomness never depends on the device: it is drawn on the CPU (core.privacy.noise).
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from core import device as devices
from core.data.preprocess import Preprocessing
from core.errors import ConfigError, DeviceUnavailable
from core.federation.plan import FederationPlan
from core.federation.weights import ParameterLayout
from core.models import build_model
from core.privacy.noise import DPRandom

SPEC = Preprocessing(size=16)
KEY = bytes(range(32))


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA GPU as torch would report one; nothing here computes on it."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "Test GPU 9000")


def test_auto_is_the_default_everywhere():
    from core.compare.config import CompareConfig
    from core.federation.client import JoinConfig
    from core.federation.simulate import SimulationConfig
    from core.training.config import TrainConfig

    assert devices.DEFAULT_DEVICE == "auto"
    assert TrainConfig(data=Path("d"), out=Path("o")).device == "auto"
    assert JoinConfig(invitation=Path("i"), data=Path("d")).device == "auto"
    assert SimulationConfig().device == "auto"
    assert CompareConfig(out=Path("o")).device == "auto"


def test_without_a_gpu_auto_is_the_cpu_and_cuda_says_what_to_choose(no_gpu):
    assert devices.resolve_device("auto") == torch.device("cpu")
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.describe_device("auto") == "CPU (no CUDA GPU found)"
    with pytest.raises(DeviceUnavailable) as raised:
        devices.resolve_device("cuda")
    message = str(raised.value)
    assert "\n" not in message and "'cpu'" in message and "'auto'" in message
    assert isinstance(raised.value, ConfigError)  # callers that catch configuration errors catch it too
    assert "choose Auto or CPU" in devices.describe_device("cuda")
    with pytest.raises(ConfigError, match="'auto', 'cpu' or 'cuda'"):
        devices.resolve_device("tpu")


def test_with_a_gpu_auto_picks_cuda_and_cpu_stays_the_cpu(fake_gpu):
    assert devices.resolve_device("auto") == torch.device("cuda")
    assert devices.resolve_device("cuda") == torch.device("cuda")
    assert devices.resolve_device("cpu") == torch.device("cpu")
    assert devices.describe_device("auto") == "CUDA: Test GPU 9000"
    assert devices.describe_device("cpu") == "CPU (chosen)"


# ---- the CPU path gives exactly what it gave before a device existed -----------------------------------

def _tiny(n=8):
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, 5, (n,), generator=generator)


def _plan(mode: str, **values) -> FederationPlan:
    return FederationPlan(name="t", federation_id="f", mode=mode, rounds=1, hospitals=4, threshold=3,
                          noise_multiplier=1.0, max_grad_norm=1.0, **values)


def _model():
    torch.manual_seed(0)
    return build_model("small_cnn", num_classes=5)


def test_fscdp_step_on_the_resolved_cpu_is_the_default_step_bit_for_bit(no_gpu):
    from core.federation.local_work import fscdp_step

    images, labels = _tiny()
    plan = _plan("fscdp", sample_rate=0.6)
    results = []
    for kwargs in ({}, {"device": devices.resolve_device("auto")}):
        model = _model()
        results.append(fscdp_step(model, ParameterLayout(model), images, labels, SPEC, plan, rng=DPRandom(KEY),
                                  **kwargs))
    assert results[0].batch_size == results[1].batch_size > 0
    assert (results[0].vector == results[1].vector).all()


def test_local_dp_training_on_the_resolved_cpu_is_the_default_run_bit_for_bit(no_gpu):
    from core.training.loop import DPSettings, train_local

    images, labels = _tiny()
    weights = []
    for kwargs in ({}, {"device": devices.resolve_device("auto")}):
        model = _model()
        train_local(model, images, labels, SPEC, epochs=1, batch_size=4, lr=0.1,
                    dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0), rng=DPRandom(KEY), **kwargs)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_fscdp_noise_is_added_on_the_cpu_to_the_sum_brought_back_from_the_device(monkeypatch):
    """Whatever the device, the clipped sum reaches add_gaussian_noise as CPU tensors: the noise path is the
    CPU one, draw for draw."""
    from core.federation import local_work
    from core.privacy import dpsgd

    seen = []
    real_noise = dpsgd.add_gaussian_noise

    def noise(grads, std, *, rng=None):
        seen.append({value.device.type for value in grads.values()})
        return real_noise(grads, std, rng=rng)

    monkeypatch.setattr(dpsgd, "add_gaussian_noise", noise)
    images, labels = _tiny()
    model = _model()
    local_work.fscdp_step(model, ParameterLayout(model), images, labels, SPEC, _plan("fscdp", sample_rate=0.6),
                          rng=DPRandom(KEY), device="cpu")
    assert seen == [{"cpu"}]


# ---- every entry point hands the resolved device to the code that computes -------------------------------

def test_cuda_without_a_gpu_stops_training_before_any_work_in_one_line(no_gpu, tmp_path, capsys):
    from core.cli import main

    code = main(["train", str(tmp_path / "no-images-needed"), "--device", "cuda", "--out", str(tmp_path / "m.dpm"),
                 "--home", str(tmp_path / "home")])
    error = capsys.readouterr().err.strip()
    assert code == 1 and error.count("\n") == 0
    assert error.startswith("error: CUDA was chosen") and "choose 'cpu' or 'auto'" in error


def test_training_computes_on_the_device_auto_found(fake_gpu, monkeypatch, tmp_path):
    from core.data.synthetic import write_demo_data
    from core.training import loop
    from core.training.config import TrainConfig
    from core.training.trainer import run

    class Stop(Exception):
        pass

    used = []

    def record(model, *args, device, **kwargs):
        used.append(device)
        raise Stop

    monkeypatch.setattr(loop, "train_local", record)
    write_demo_data(tmp_path / "data", hospitals=1, per_hospital=20, test_images=10, size=32, seed=3)
    config = TrainConfig(data=tmp_path / "data" / "hospital_01", out=tmp_path / "m.dpm", mode="c", model="small_cnn",
                         epochs=1, image_size=16, home=tmp_path / "home")
    with pytest.raises(Stop):
        run(config)
    assert used == [torch.device("cuda")]


def test_a_hospital_round_computes_on_the_participants_device(monkeypatch):
    from core.federation import local_work
    from core.federation.hospital_round import HospitalRound
    from core.federation.protocol import RoundContext

    calls = []
    monkeypatch.setattr(local_work, "fscdp_step", lambda *a, **k: calls.append(("fscdp", k.get("device")))
                        or SimpleNamespace(loss=0.0))
    monkeypatch.setattr(local_work, "train_delta", lambda *a, **k: calls.append(("delta", k.get("device"))))
    participant = SimpleNamespace(model=None, layout=None, images=None, labels=None, spec=None,
                                  plan=SimpleNamespace(mode="fscdp"), device=torch.device("cuda"), cancel=None,
                                  load_global_into_model=lambda: None, emit=lambda event: None)
    attempt = HospitalRound(participant, RoundContext(1, 1))
    attempt._fscdp_step()
    attempt._train_delta()
    assert calls == [("fscdp", torch.device("cuda")), ("delta", torch.device("cuda"))]


def test_joining_resolves_the_device_before_anything_else(no_gpu, monkeypatch, tmp_path):
    from core.federation import client

    started = []
    monkeypatch.setattr(client, "read_invitation", lambda path: SimpleNamespace(plan=SimpleNamespace(secagg=True)))

    class Participant(client._Participant):
        def __init__(self, config, invitation, *args):
            self.config, self.plan = config, invitation.plan

        def prepare(self):
            started.append(self.config.device)
            super().prepare()  # resolves the device first: here it raises before any image is read

        def close(self):
            pass

    monkeypatch.setattr(client, "_Participant", Participant)
    config = client.JoinConfig(invitation=tmp_path / "i.json", data=tmp_path / "none", home=tmp_path / "home",
                               device="cuda")
    with pytest.raises(DeviceUnavailable):
        client.run(config)
    assert started == ["cuda"]
    with pytest.raises(ConfigError, match="'auto', 'cpu' or 'cuda'"):
        client.run(client.JoinConfig(invitation=tmp_path / "i.json", data=tmp_path / "none", device="gpu"))


def test_join_and_simulate_take_device_on_the_command_line(monkeypatch, tmp_path):
    from core.cli import build_parser
    from core.federation import simulate

    parser = build_parser()
    join = parser.parse_args(["join", "inv.json", "--data", "d"])
    assert join.device == "auto"
    assert parser.parse_args(["join", "inv.json", "--data", "d", "--device", "cpu"]).device == "cpu"
    assert parser.parse_args(["simulate", "--device", "cuda"]).device == "cuda"
    assert parser.parse_args(["compare", "--out", "o"]).device == "auto"
    assert parser.parse_args(["train", "d", "--out", "m.dpm"]).device == "auto"

    launched = []

    class Popen:
        def __init__(self, argv, **kwargs):
            launched.append(argv)
            self.stdout = iter(())

    monkeypatch.setattr(subprocess, "Popen", Popen)
    hospital = simulate.HospitalProcess(1, tmp_path / "i.json", tmp_path / "d", tmp_path / "h", tmp_path / "h.err",
                                        max_epsilon=1.0, device="cuda")
    hospital.start()
    argv = launched[0]
    assert argv[argv.index("--device") + 1] == "cuda"


def test_simulating_on_cuda_without_a_gpu_is_refused_before_any_process_starts(no_gpu, tmp_path):
    from core.federation.simulate import SimulationConfig, run

    with pytest.raises(DeviceUnavailable):
        run(SimulationConfig(hospitals=2, device="cuda", workdir=tmp_path / "sim"))
    assert not (tmp_path / "sim" / "data").exists()


def test_comparing_computes_on_the_device_auto_found(fake_gpu, monkeypatch, tmp_path):
    from core.compare import run as compare_run
    from core.compare.config import CompareConfig

    used = []

    def fake(settings, data, seed, **kwargs):
        used.append(kwargs["device"])
        raise KeyboardInterrupt  # stop at the first run: the device is what this test is about

    monkeypatch.setattr(compare_run, "run_mode", fake)
    config = CompareConfig(out=tmp_path / "c", hospitals=2, seeds=1, synthetic_images=60, epochs=1, rounds=1,
                           local_epochs=1, batch_size=16, local_batch_size=8, lr_search=False, image_size=16,
                           modes=("c",))
    with pytest.raises(KeyboardInterrupt):
        compare_run.run(config)
    assert used == [torch.device("cuda")]
    # Where a comparison computed is not one of its settings: the same folder resumes on another device.
    assert config.fingerprint() == CompareConfig(**{**config.__dict__, "device": "cpu"}).fingerprint()
