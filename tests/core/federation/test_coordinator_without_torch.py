"""The coordinator's serving process works without torch: its model state carries the layout, it writes
the packages from numpy, and it evaluates in a child process with the same figures as in-process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core.federation.evaluation import Evaluation, EvaluationProcess
from core.federation.layout import FederationPaths, InitConfig, init_federation, load_settings
from core.federation.model_state import initial_state, read_state, write_state
from core.federation.plan import load_plan
from core.federation.publisher import ModelPublisher
from core.models.package import read_package
from core.models.registry import build_model
from core.signing import load_private_key

ROOT = Path(__file__).resolve().parents[3]


def _federation(tmp_path: Path, *, eval_data: Path | None = None) -> FederationPaths:
    init_federation(InitConfig(
        folder=tmp_path / "fed", name="no torch", mode="fscdp", rounds=3, hospitals=3, hosts=["127.0.0.1"],
        port=1, image_size=32, model="small_cnn", sample_rate=0.2, noise_multiplier=1.0, max_grad_norm=1.0,
        lr=0.1, delta=1e-4, eval_data=eval_data, eval_every=1))
    return FederationPaths(tmp_path / "fed")


def _eval_images(folder: Path) -> Path:
    rng = np.random.default_rng(0)
    for grade, count in (("0", 5), ("2", 3)):
        (folder / grade).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / grade / f"{index}.png")
    return folder


def test_the_initial_state_is_the_model_every_hospital_builds(tmp_path):
    paths = _federation(tmp_path)
    plan = load_plan(paths.plan)
    state = read_state(paths.server_state(0), plan)
    torch.manual_seed(plan.seed)
    model = build_model(plan.model, len(plan.classes))
    assert state.layout.names == [name for name, _ in model.named_parameters()]
    assert state.layout.shapes == {name: tuple(p.shape) for name, p in model.named_parameters()}
    built = np.concatenate([p.detach().reshape(-1).double().numpy() for p in model.parameters()])
    assert np.array_equal(state.weights, built)
    assert state.steps == 0 and not state.first.any() and not state.second.any()


def test_a_state_written_without_its_layout_is_read_with_the_models(tmp_path):
    # Folders written by an older version: the state file has the same tensors but no layout header.
    from safetensors.numpy import load, save

    paths = _federation(tmp_path)
    plan = load_plan(paths.plan)
    state = initial_state(plan)
    state.weights = state.weights + 0.5
    state.steps = 4
    write_state(paths.server_state(2), plan, state)
    old = paths.server_state(3)
    old.write_bytes(save(load(paths.server_state(2).read_bytes())))  # no metadata
    again = read_state(old, plan)
    assert again.layout.names == state.layout.names and again.steps == 4
    assert np.array_equal(again.weights, state.weights.astype(np.float32).astype(np.float64))


def test_published_packages_are_those_torch_would_write(tmp_path):
    paths = _federation(tmp_path)
    plan = load_plan(paths.plan)
    publisher = ModelPublisher(paths, plan, load_private_key(paths.signing_key), model_round=0)
    publisher.step(np.full(publisher.layout.length, 0.01))
    publisher.publish(1, contributors={"a": 10}, rounds_taken={"h01": (1, 10)}, metrics={})
    package = read_package(paths.model_package(1), require_signature=True,
                           trusted_keys=[read_package(paths.model_package(1), require_signature=False).signer_public_key])
    flat = np.concatenate([package.state_dict[name].reshape(-1).double().numpy() for name in publisher.layout.names])
    assert np.array_equal(flat, publisher.weights.astype(np.float32).astype(np.float64))
    assert package.card.epsilon is not None and package.card.epsilon > 0
    # A restart reads back exactly what was published, optimizer included.
    again = ModelPublisher(paths, plan, load_private_key(paths.signing_key), model_round=1)
    assert np.array_equal(again.weights, flat) and again.optimizer.steps == 1


def test_the_serving_process_imports_neither_torch_nor_opacus(tmp_path):
    paths = _federation(tmp_path)
    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import core.federation.server\n"
        "from core.federation.coordinator import Coordinator\n"
        f"coordinator = Coordinator(Path({str(paths.root)!r}))\n"
        "coordinator.start()\n"  # publishes round 0 (its card states epsilon)
        "coordinator.publisher.step(coordinator.publisher.weights * 0 + 0.01)\n"
        "coordinator.publisher.publish(1, contributors={'a': 10}, rounds_taken={'h01': (1, 10)}, metrics={})\n"
        "coordinator.stop()\n"
        "print(json.dumps(sorted(m for m in ('torch', 'opacus', 'scipy.stats') if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert paths.model_package(1).exists()


@pytest.mark.slow
def test_the_evaluation_child_gives_the_in_process_figures(tmp_path):
    paths = _federation(tmp_path, eval_data=_eval_images(tmp_path / "test"))
    plan = load_plan(paths.plan)
    state = read_state(paths.server_state(0), plan)
    settings = load_settings(paths)
    child = EvaluationProcess(paths.root, settings, plan, state.layout)
    try:
        weights = state.weights + np.random.default_rng(1).normal(0, 0.05, state.layout.length)
        remote = child.evaluate(weights)
    finally:
        child.close()
    model = build_model(plan.model, len(plan.classes))
    with torch.no_grad():
        for name, array in state.layout.unflatten_arrays(weights).items():
            model.get_parameter(name).copy_(torch.from_numpy(array))
    local = Evaluation(settings, plan, paths.root / "cache").evaluate(model)
    assert remote == json.loads(json.dumps(local))


@pytest.mark.slow
def test_an_evaluation_folder_without_images_stops_the_start_with_its_reason(tmp_path):
    (tmp_path / "empty").mkdir()
    paths = _federation(tmp_path, eval_data=tmp_path / "empty")
    plan = load_plan(paths.plan)
    from core.errors import FederationError

    with pytest.raises(FederationError, match="No images found in"):
        EvaluationProcess(paths.root, load_settings(paths), plan, read_state(paths.server_state(0), plan).layout)
