"""The coordinator's model state file, ``models/server-rNNNN.safetensors``: the global weights after a
round, the server optimizer's moments and step count, and what the serving process needs to know about
the model without building it: the parameters' order and shapes, and the preprocessing for the card.

The coordinator's serving process never imports torch (it would carry about 250 MB for it). The state
of round 0 -- the plan's architecture built from the plan's seed, as every hospital builds it -- is
written when the federation is created (``write_initial_state``, where torch is at hand); every later
state is written by the coordinator from numpy arrays. A state file without the layout (written by an
older version) is read with the layout of a freshly built model (``initial_state``), importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.config import atomic_write_bytes
from core.errors import FederationError
from core.federation.plan import FederationPlan
from core.federation.weights import ParameterLayout, arrays_from_bytes, arrays_to_bytes, safetensors_metadata

FORMAT = "dopamine-server-state/v1"


@dataclass
class ModelState:
    layout: ParameterLayout
    weights: np.ndarray  # float64, the layout's length
    first: np.ndarray  # the optimizer's first moment (momentum / Adam's m)
    second: np.ndarray  # Adam's v (zeros for SGD)
    steps: int
    preprocessing: dict  # the card's preprocessing (core.data.Preprocessing.to_dict())


def initial_state(plan: FederationPlan) -> ModelState:
    """The plan's model as every party builds it before round 1 (imports torch)."""
    import torch

    from core.data.preprocess import Preprocessing
    from core.models.registry import build_model

    torch.manual_seed(plan.seed)  # the initial weights are public: every hospital builds the same model
    model = build_model(plan.model, len(plan.classes))
    if [name for name, _ in model.named_parameters()] != list(model.state_dict()):
        raise FederationError(f"Architecture {plan.model} has buffers; the coordinator federates parameters only.")
    layout = ParameterLayout(model)
    zeros = np.zeros(layout.length)
    return ModelState(layout, layout.flatten(dict(model.named_parameters())), zeros, zeros.copy(), 0,
                      Preprocessing(size=plan.image_size).to_dict())


def write_initial_state(path: Path, plan: FederationPlan) -> None:
    write_state(path, plan, initial_state(plan))


def write_state(path: Path, plan: FederationPlan, state: ModelState) -> None:
    """Write ``state`` atomically (float32 weights and moments, as the published model)."""
    layout = state.layout
    arrays = {f"w/{k}": v for k, v in layout.unflatten_arrays(state.weights).items()}
    arrays |= {f"m/{k}": v for k, v in layout.unflatten_arrays(state.first).items()}
    arrays |= {f"v/{k}": v for k, v in layout.unflatten_arrays(state.second).items()}
    arrays["steps"] = np.array([float(state.steps)], dtype=np.float32)
    metadata = {
        "format": FORMAT,
        "architecture": plan.model,
        "classes": str(len(plan.classes)),
        "parameters": json.dumps([[name, list(layout.shapes[name])] for name in layout.names]),
        "preprocessing": json.dumps(state.preprocessing, sort_keys=True),
    }
    atomic_write_bytes(path, arrays_to_bytes(arrays, metadata))


def read_state(path: Path, plan: FederationPlan) -> ModelState:
    """The state in ``path`` (FederationError when it is missing, damaged or of another model)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FederationError(f"The coordinator's model state {path} is missing ({exc}); restore the folder "
                              "from a backup.") from exc
    metadata = safetensors_metadata(data)
    if metadata.get("format") == FORMAT:
        if metadata.get("architecture") != plan.model or metadata.get("classes") != str(len(plan.classes)):
            raise FederationError(f"The coordinator's model state {path.name} is of another model than the plan's.")
        try:
            layout = ParameterLayout.from_shapes(json.loads(metadata["parameters"]))
            preprocessing = json.loads(metadata["preprocessing"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FederationError(f"The coordinator's model state {path.name} has a damaged header.") from exc
    else:  # written before the state carried its layout: take it from the model itself
        initial = initial_state(plan)
        layout, preprocessing = initial.layout, initial.preprocessing
    shapes = {f"{part}/{k}": v for part in "wmv" for k, v in layout.shapes.items()} | {"steps": (1,)}
    arrays = arrays_from_bytes(data, expected=shapes, what="coordinator model state")
    names = layout.names
    return ModelState(
        layout,
        weights=layout.flatten({k: arrays[f"w/{k}"] for k in names}),
        first=layout.flatten({k: arrays[f"m/{k}"] for k in names}),
        second=layout.flatten({k: arrays[f"v/{k}"] for k in names}),
        steps=int(arrays["steps"][0]),
        preprocessing=preprocessing,
    )
