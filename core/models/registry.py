"""The architectures Dopamine trains, by name, and weight loading that checks shapes."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from core.errors import ModelError
from core.models.names import MODEL_NAMES
from core.models.resnet import ResNet18GN
from core.models.small_cnn import SmallCNN
from core.models.squeezenet import SqueezeNet11

_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "squeezenet1_1": SqueezeNet11,
    "resnet18_gn": ResNet18GN,
    "small_cnn": SmallCNN,
}


def build_model(name: str, num_classes: int = 5, *, weights: Path | None = None) -> nn.Module:
    """A freshly initialised model (deterministic under ``torch.manual_seed``).

    ``weights``: a .safetensors state dict to start from; every tensor must match the
    architecture's names and shapes (ModelError otherwise).
    """
    if name not in _BUILDERS:
        raise ModelError(f"Unknown model architecture {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"A model needs at least 2 classes (got {num_classes!r}).")
    model = _BUILDERS[name](num_classes)
    if weights is not None:
        load_weights(model, read_safetensors(Path(weights)), source=Path(weights).name)
    return model


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file (a format that cannot carry code, unlike pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"Cannot read weights file {path}: {exc.strerror or exc}.") from exc
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path.name} is not a valid .safetensors weights file ({exc}).") from exc


def check_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """ModelError unless ``state_dict`` holds exactly ``model``'s tensors, with the same shapes,
    floating-point and finite. ``model`` may live on the meta device (shapes only).

    ``source`` names the file in error messages.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    if missing or unexpected:
        details = []
        if missing:
            details.append(f"missing {_first(missing)}")
        if unexpected:
            details.append(f"unexpected {_first(unexpected)}")
        raise ModelError(
            f"{source} does not fit this architecture ({'; '.join(details)}); "
            "use weights saved from the same architecture and number of classes."
        )
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor) or tuple(tensor.shape) != tuple(expected[name].shape):
            shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
            raise ModelError(
                f"{source}: tensor {name} has shape {shape} but the architecture needs "
                f"{tuple(expected[name].shape)}; use weights saved from the same architecture and number of classes."
            )
        if not tensor.is_floating_point():
            raise ModelError(f"{source}: tensor {name} has type {tensor.dtype}; model weights are floating point.")
        if not torch.isfinite(tensor).all():
            raise ModelError(f"{source}: tensor {name} contains NaN or infinite values; the weights are unusable.")


def load_weights(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy ``state_dict`` into ``model`` after check_weights."""
    check_weights(model, state_dict, source=source)
    expected = model.state_dict()
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True)


def _first(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _unwrap(model: nn.Module) -> nn.Module:
    # Opacus's GradSampleModule keeps the real model in ``_module``.
    while hasattr(model, "_module") and isinstance(model._module, nn.Module):
        model = model._module
    return model


@runtime_checkable
class _NamesGradCamLayer(Protocol):
    def gradcam_layer(self) -> nn.Module: ...


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The module whose output and gradient Grad-CAM uses: the last convolutional stage.

    For the registry's models this is the stage feeding the classifier head (SqueezeNet's
    last Fire module, ResNet's last block); for any other model, its last Conv2d.
    """
    model = _unwrap(model)
    if isinstance(model, _NamesGradCamLayer):  # what hasattr(model, "gradcam_layer") checks
        return model.gradcam_layer()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ModelError(f"{type(model).__name__} has no convolutional layer for a saliency map.")
    return convs[-1]
