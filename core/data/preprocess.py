"""The one preprocessing pipeline, shared by training and inference.

``resize_crop`` turns a decoded image into a uint8 tensor (what the cache stores); ``normalize`` turns a
batch of those into model input. ``preprocess`` is the two together, for single images at inference.

Two pipelines, chosen by the model card's preprocessing (so inference repeats what training did):

- plain: resize the short side to ``resize`` and crop the centre ``size`` x ``size``;
- ``fundus_crop``: find the retina's disc (core.data.fundus), crop its bounding square with
  ``crop_margin``, pad to square, resize to ``size``; an image without a dark surround falls back to
  the plain pipeline. ``local_contrast`` adds the local-average colour normalisation (either pipeline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from core.data.fundus import DiscSearch, crop_box, crop_square, disc_mask, find_disc, local_average_normalise
from core.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_DEFAULT_MARGIN = 0.03
MAX_SIZE = 2048
"""The largest model input (pixels a side) and, times two, the largest resize: a model card from outside
may not make the viewer allocate gigabytes for one image (a size of 100,000 would want 40 GB)."""


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond any float
        return False


@dataclass(frozen=True)
class Preprocessing:
    """Resize the short side to ``resize``, center-crop ``size`` x ``size``, normalize with mean/std; or,
    with ``fundus_crop``, crop the retina's square (``crop_margin`` of its radius around it) instead."""

    size: int = 224
    resize: int | None = None
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    fundus_crop: bool = False
    crop_margin: float = _DEFAULT_MARGIN
    local_contrast: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 8 <= self.size <= MAX_SIZE:
            raise ConfigError(f"Image size {self.size!r:.40} is invalid; use a whole number of pixels from 8 to "
                              f"{MAX_SIZE}.")
        if self.resize is not None and (not isinstance(self.resize, int) or isinstance(self.resize, bool)
                                        or not self.size <= self.resize <= 2 * MAX_SIZE):
            raise ConfigError(f"Resize {self.resize!r:.40} must be a whole number from the image size {self.size} "
                              f"to {2 * MAX_SIZE}.")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if (len(values) != 3 or not all(isinstance(v, int | float) for v in values)
                    or not all(_finite(v) for v in values)):
                raise ConfigError(f"Preprocessing {name} must be three finite numbers (R, G, B), not {values!r:.80}.")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if min(self.std) <= 0:
            raise ConfigError(f"Preprocessing std must be positive, not {self.std!r}.")
        for name in ("fundus_crop", "local_contrast"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"Preprocessing {name} must be true or false, not {getattr(self, name)!r}.")
        margin = self.crop_margin
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0.0 <= margin <= 0.5:
            raise ConfigError(f"Crop margin {margin!r} must be a fraction of the retina's radius from 0 to 0.5.")
        object.__setattr__(self, "crop_margin", float(margin))

    @property
    def resize_to(self) -> int:
        """The short-side length before cropping (the usual 256 for a 224 crop)."""
        return self.resize if self.resize is not None else round(self.size * 256 / 224)

    def to_dict(self) -> dict[str, Any]:
        # The effective resize is stored, so a model card keeps meaning the same if the default changes.
        data: dict[str, Any] = {"size": self.size, "resize": self.resize_to, "mean": list(self.mean),
                                "std": list(self.std)}
        # The newer options are written only when used: a card without them reads the same in older
        # versions, and a card that needs them is refused by a version that cannot repeat them.
        if self.fundus_crop:
            data["fundus_crop"] = True
            data["crop_margin"] = self.crop_margin
        if self.local_contrast:
            data["local_contrast"] = True
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        if not isinstance(data, dict):
            raise ConfigError("Preprocessing settings must be a table of size, resize, mean and std.")
        unknown = set(data) - {"size", "resize", "mean", "std", "fundus_crop", "crop_margin", "local_contrast"}
        if unknown:
            raise ConfigError(f"Unknown preprocessing setting(s) {sorted(unknown)}.")
        kwargs: dict[str, Any] = dict(data)
        for name in ("mean", "std"):
            if name in kwargs:
                if not isinstance(kwargs[name], list | tuple):
                    raise ConfigError(f"Preprocessing {name} must be three numbers (R, G, B).")
                kwargs[name] = tuple(kwargs[name])
        return cls(**kwargs)

    def cache_settings(self) -> str:
        """What shapes the uint8 tensor (mean and std do not: they are applied later)."""
        text = f"size={self.size}|resize={self.resize_to}"
        if self.fundus_crop:
            text += f"|fundus={self.crop_margin:.4f}"
        if self.local_contrast:
            text += "|local_contrast"
        return text

    def describe(self) -> str:
        """One line for a model card or a page: what is done to every image."""
        if self.fundus_crop:
            text = f"retina cropped ({self.crop_margin:.0%} margin), resized to {self.size} px"
        else:
            text = f"short side resized to {self.resize_to} px, centre {self.size} px cropped"
        if self.local_contrast:
            text += ", local-average colour normalisation"
        return text


@dataclass(frozen=True)
class Prepared:
    """One image after preprocessing, before normalisation, and how it was cut from the original."""

    image: Image.Image
    """RGB, ``size`` x ``size``: what the model sees (for previews and heatmap overlays)."""
    box: tuple[float, float, float, float]
    """(left, top, width, height) of the region used, in the original image's pixels (it may extend past
    the frame where a fundus disc is cut by it: that part is black padding)."""
    search: DiscSearch | None = None
    """The fundus disc search (None when ``fundus_crop`` is off); search.disc None means the plain
    pipeline was used, and search.reason says why."""

    @property
    def fell_back(self) -> bool:
        return self.search is not None and self.search.disc is None

    def tensor(self) -> torch.Tensor:
        import torch  # lazy: the decode workers (core.data.decode) use this module without torch

        array = np.asarray(self.image, dtype=np.uint8)
        return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


def prepare(image: Image.Image, spec: Preprocessing) -> Prepared:
    """The model's view of ``image`` under ``spec`` (see the module docstring)."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    width, height = image.size
    if width < 1 or height < 1:
        raise DataError("Image has no pixels.")
    search = None
    if spec.fundus_crop:
        search = find_disc(image)
        if search.disc is not None:
            view, shown = crop_square(image, search.disc, spec.crop_margin, spec.size)
            left, top, right, bottom = crop_box(search.disc, spec.crop_margin)
            if spec.local_contrast:
                inside = disc_mask(spec.size, spec.crop_margin) & shown
                view = local_average_normalise(view, spec.size / (2.0 * (1.0 + spec.crop_margin)), inside)
            return Prepared(view, (left, top, right - left, bottom - top), search)
    view, box = _plain(image, spec)
    if spec.local_contrast:
        view = local_average_normalise(view)
    return Prepared(view, box, search)


def _plain(image: Image.Image, spec: Preprocessing) -> tuple[Image.Image, tuple[float, float, float, float]]:
    width, height = image.size
    scale = spec.resize_to / min(width, height)
    new_size = (max(spec.size, round(width * scale)), max(spec.size, round(height * scale)))
    if new_size != image.size:
        # Pillow's bilinear filter widens its support when shrinking, i.e. it antialiases; reducing_gap
        # first box-reduces very large photographs, which is much faster and visually identical.
        image = image.resize(new_size, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left = int(round((new_size[0] - spec.size) / 2.0))
    top = int(round((new_size[1] - spec.size) / 2.0))
    view = image.crop((left, top, left + spec.size, top + spec.size))
    sx, sy = width / new_size[0], height / new_size[1]
    return view, (left * sx, top * sy, spec.size * sx, spec.size * sy)


def resize_crop(image: Image.Image, spec: Preprocessing) -> torch.Tensor:
    """The preprocessed image as uint8 [3, S, S] (plain: short side resized, centre cropped; fundus: the
    retina's square)."""
    return prepare(image, spec).tensor()


def normalize(batch_uint8: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """uint8 [..., 3, H, W] -> float32 scaled to [0, 1] and standardised with the spec's mean and std."""
    import torch

    if batch_uint8.dtype != torch.uint8 or batch_uint8.dim() < 3 or batch_uint8.shape[-3] != 3:
        raise DataError(f"Expected uint8 images shaped [..., 3, H, W], got {batch_uint8.dtype} "
                        f"{tuple(batch_uint8.shape)}.")
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    return (batch_uint8.to(torch.float32) / 255.0 - mean) / std


def preprocess(image: Image.Image, spec: Preprocessing) -> torch.Tensor:
    """One image to model input, float32 [3, S, S]; identical to normalize(resize_crop(image))."""
    return normalize(resize_crop(image, spec), spec)
