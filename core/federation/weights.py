"""Model weights as flat float vectors (what secure aggregation and the server optimizer work on)
and as safetensors bytes (what travels). Nothing here can unpickle: safetensors holds only tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from core.errors import FederationError


class ParameterLayout:
    """The names, shapes and order of a model's trainable parameters (the federated vector).

    Buffers (none in the registry's GroupNorm models) stay at the coordinator's values.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.names = [name for name, _ in model.named_parameters()]
        self.shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
        self.sizes = [int(np.prod(self.shapes[name])) for name in self.names]
        self.length = int(sum(self.sizes))

    def flatten(self, tensors: Mapping[str, torch.Tensor], dtype=np.float64) -> np.ndarray:
        out = np.empty(self.length, dtype=dtype)
        offset = 0
        for name, size in zip(self.names, self.sizes, strict=True):
            out[offset : offset + size] = tensors[name].detach().cpu().reshape(-1).double().numpy()
            offset += size
        return out

    def unflatten(self, vector: np.ndarray) -> dict[str, torch.Tensor]:
        if vector.shape != (self.length,):
            raise FederationError(f"Update has {vector.shape} values; the model has {self.length} parameters.")
        out = {}
        offset = 0
        for name, size in zip(self.names, self.sizes, strict=True):
            chunk = np.asarray(vector[offset : offset + size], dtype=np.float32)
            out[name] = torch.from_numpy(chunk.copy()).reshape(self.shapes[name])
            offset += size
        return out


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()})


def tensors_from_bytes(data: bytes, *, expected: Mapping[str, tuple[int, ...]], what: str) -> dict[str, torch.Tensor]:
    """Parse safetensors bytes that must hold exactly ``expected`` (name -> shape), finite float32."""
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise FederationError(f"The {what} is not a valid safetensors payload.") from exc
    if set(tensors) != set(expected):
        missing = sorted(set(expected) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(expected))[:3]
        raise FederationError(f"The {what} does not fit the model (missing {missing}, unexpected {extra}).")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name]):
            raise FederationError(f"The {what} has the wrong shape for {name}.")
        if tensor.dtype != torch.float32:
            raise FederationError(f"The {what} must hold float32 values ({name} is {tensor.dtype}).")
        if not bool(torch.isfinite(tensor).all()):
            raise FederationError(f"The {what} holds non-finite values ({name}).")
    return tensors
