"""The one preprocessing pipeline, shared by training and inference.

``resize_crop`` turns a decoded image into a uint8 tensor (what the cache stores); ``normalize`` turns a
batch of those into model input. ``preprocess`` is the two together, for single images at inference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from core.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize``, center-crop ``size`` x ``size``, normalize with mean/std."""

    size: int = 224
    resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 8:
            raise ConfigError(f"Image size {self.size!r} is invalid; use a whole number of pixels >= 8.")
        if self.resize is not None and (not isinstance(self.resize, int) or self.resize < self.size):
            raise ConfigError(f"Resize {self.resize!r} must be a whole number >= the image size {self.size}.")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) != 3 or not all(isinstance(v, int | float) for v in values):
                raise ConfigError(f"Preprocessing {name} must be three numbers (R, G, B), not {values!r}.")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if min(self.std) <= 0:
            raise ConfigError(f"Preprocessing std must be positive, not {self.std!r}.")

    @property
    def resize_to(self) -> int:
        """The short-side length before cropping (the usual 256 for a 224 crop)."""
        return self.resize if self.resize is not None else round(self.size * 256 / 224)

    def to_dict(self) -> dict[str, Any]:
        # The effective resize is stored, so a model card keeps meaning the same if the default changes.
        return {"size": self.size, "resize": self.resize_to, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        if not isinstance(data, dict):
            raise ConfigError("Preprocessing settings must be a table of size, resize, mean and std.")
        unknown = set(data) - {"size", "resize", "mean", "std"}
        if unknown:
            raise ConfigError(f"Unknown preprocessing setting(s) {sorted(unknown)}.")
        kwargs: dict[str, Any] = dict(data)
        for name in ("mean", "std"):
            if name in kwargs:
                if not isinstance(kwargs[name], list | tuple):
                    raise ConfigError(f"Preprocessing {name} must be three numbers (R, G, B).")
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)


def resize_crop(image: Image.Image, spec: Preprocessing) -> torch.Tensor:
    """Resize the short side to ``spec.resize_to`` (bilinear, antialiased) and center-crop: uint8 [3, S, S]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width < 1 or height < 1:
        raise DataError("Image has no pixels.")
    scale = spec.resize_to / min(width, height)
    new_size = (max(spec.size, round(width * scale)), max(spec.size, round(height * scale)))
    if new_size != image.size:
        # Pillow's bilinear filter widens its support when shrinking, i.e. it antialiases; reducing_gap
        # first box-reduces very large photographs, which is much faster and visually identical.
        image = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left = int(round((new_size[0] - spec.size) / 2.0))
    top = int(round((new_size[1] - spec.size) / 2.0))
    image = image.crop((left, top, left + spec.size, top + spec.size))
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def normalize(batch_uint8: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 scaled to [0, 1] and standardised with the spec's mean and std."""
    if batch_uint8.dtype != torch.uint8 or batch_uint8.dim() < 3 or batch_uint8.shape[-3] != 3:
        raise DataError(f"Expected uint8 images shaped [..., 3, H, W], got {batch_uint8.dtype} "
                        f"{tuple(batch_uint8.shape)}.")
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    return (batch_uint8.to(torch.float32) / 255.0 - mean) / std


def preprocess(image: Image.Image, spec: Preprocessing) -> torch.Tensor:
    """One image to model input, float32 [3, S, S]; identical to normalize(resize_crop(image))."""
    return normalize(resize_crop(image, spec), spec)
