"""Model weights as flat float vectors (what secure aggregation and the server optimizer work on)
and as safetensors bytes (what travels). Nothing here can unpickle: safetensors holds only tensors.

Hospitals use the torch forms (``ParameterLayout(model)``, ``tensors_to_bytes``/``tensors_from_bytes``);
the coordinator only numpy ones (``ParameterLayout.from_shapes``, ``arrays_to_bytes``/``arrays_from_bytes``),
so its serving process never imports torch. Both write and read the same safetensors format.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import SafetensorError

from core.errors import FederationError

if TYPE_CHECKING:
    import torch


class ParameterLayout:
    """The names, shapes and order of a model's trainable parameters (the federated vector).

    Buffers (none in the registry's GroupNorm models) stay at the coordinator's values.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self._set([(name, tuple(p.shape)) for name, p in model.named_parameters()])

    @classmethod
    def from_shapes(cls, shapes: Sequence[tuple[str, Sequence[int]]]) -> ParameterLayout:
        """The layout of parameters ``(name, shape)`` in this order (no model needed)."""
        layout = cls.__new__(cls)
        layout._set([(str(name), tuple(int(n) for n in shape)) for name, shape in shapes])
        return layout

    def _set(self, shapes: list[tuple[str, tuple[int, ...]]]) -> None:
        self.names = [name for name, _ in shapes]
        self.shapes = dict(shapes)
        self.sizes = [int(np.prod(shape)) for _, shape in shapes]
        self.length = int(sum(self.sizes))

    def flatten(self, tensors: Mapping[str, Any], dtype=np.float64) -> np.ndarray:
        """One vector of ``tensors`` (torch tensors or numpy arrays) in the layout's order."""
        out = np.empty(self.length, dtype=dtype)
        offset = 0
        for name, size in zip(self.names, self.sizes, strict=True):
            value = tensors[name]
            if not isinstance(value, np.ndarray):
                value = value.detach().cpu().double().numpy()
            out[offset : offset + size] = value.reshape(-1)
            offset += size
        return out

    def unflatten(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        import torch

        return {name: torch.from_numpy(array) for name, array in self.unflatten_arrays(vector).items()}

    def unflatten_arrays(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """The parameters as float32 arrays of their shapes (copies)."""
        if vector.shape != (self.length,):
            raise FederationError(f"Update has {vector.shape} values; the model has {self.length} parameters.")
        out = {}
        offset = 0
        for name, size in zip(self.names, self.sizes, strict=True):
            chunk = np.array(vector[offset : offset + size], dtype=np.float32)
            out[name] = chunk.reshape(self.shapes[name])
            offset += size
        return out


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def arrays_to_bytes(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    from safetensors.numpy import save

    return save({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                metadata=dict(metadata) if metadata else None)


def tensors_from_bytes(data: bytes, *, expected: Mapping[str, tuple[int, ...]], what: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes that must hold exactly ``expected`` (name -> shape), finite float32
    (``arrays_from_bytes``, as torch tensors)."""
    import torch

    arrays = arrays_from_bytes(data, expected=expected, what=what)
    return {name: torch.from_numpy(np.array(array)) for name, array in arrays.items()}  # writable copies


def arrays_from_bytes(data: bytes, *, expected: Mapping[str, tuple[int, ...]], what: str) -> dict[str, np.ndarray]:
    """Parse safetensors bytes that must hold exactly ``expected`` (name -> shape), finite float32."""
    from safetensors.numpy import load

    try:
        arrays = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FederationError(f"The {what} is not a valid safetensors payload.") from exc
    _check_fit(arrays, expected, what)
    for name, array in arrays.items():
        if array.dtype != np.float32:
            raise FederationError(f"The {what} must hold float32 values ({name} is {array.dtype}).")
        if not np.isfinite(array).all():
            raise FederationError(f"The {what} holds non-finite values ({name}).")
    return arrays


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of safetensors bytes ({} when there is none or the header is malformed)."""
    if len(data) < 8:
        return {}
    size = int.from_bytes(data[:8], "little")
    if size > len(data) - 8:
        return {}
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        return {}
    return {str(k): v for k, v in metadata.items() if isinstance(v, str)}


def _check_fit(tensors: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        raise FederationError(f"The {what} does not fit the model (missing {missing}, unexpected {extra}).")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise FederationError(f"The {what} has the wrong shape for {name}.")
