"""Is this image like the ones the model was tested on? Size, shape and colour against the card's reference.

The card's evaluation carries a small reference of its held-out images (median width and height, the mean
and spread of their colours as the model sees them); ``check_input`` compares one image with it and says in
words when the image is far from them, and always says at what size the model sees it. Cards without a
reference get the size checks against the model's input only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

# An image whose short side is this many times larger or smaller than the reference's is far from it.
SIZE_RATIO = 3.0
# Long side / short side this much above the reference's shape: the centre crop cuts much of the image.
ASPECT_RATIO = 1.3
# A colour channel whose mean is this many reference spreads away is far from the tested images.
COLOUR_Z = 4.0
# Spreads below this (grey levels) are treated as this: a very uniform reference must not flag everything.
MIN_COLOUR_SPREAD = 6.0
# Colour spreads measured on fewer held-out images than this are too rough to call an image far from them.
MIN_COLOUR_IMAGES = 10
# Without a reference: shrinking by more than this loses the fine detail (microaneurysms) of a photograph.
MAX_SHRINK = 12.0


@dataclass(frozen=True)
class InputCheck:
    input_size: int  # the model sees input_size x input_size pixels
    image_size: tuple[int, int]  # width, height of the original
    warnings: list[str] = field(default_factory=list)

    @property
    def scale(self) -> float:
        """How much the short side is shrunk (> 1) or enlarged (< 1) to reach the model's input."""
        return min(self.image_size) / self.input_size

    @property
    def summary(self) -> str:
        width, height = self.image_size
        if self.scale > 1.05:
            how = f"shrunk {self.scale:.3g}× from {width} × {height}"
        elif self.scale < 0.95:
            how = f"enlarged {1 / self.scale:.3g}× from {width} × {height}"
        else:
            how = f"from {width} × {height}"
        return f"The model sees this image at {self.input_size} × {self.input_size} px ({how})."

    def to_dict(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "image_size": list(self.image_size), "warnings": list(self.warnings)}


_STATS_CHUNK = 256


def reference_statistics(images_uint8: Any, make_up: dict | None) -> dict:
    """The reference a card keeps about its held-out images: their count, median width and height (from the
    validation report's make-up) and the mean and spread of each colour channel's per-image mean, measured
    on the images as the model sees them (uint8 [N, 3, S, S]: a tensor, an array or an ImageStore). Aggregates
    only: no single image's values."""
    count = len(images_uint8)
    reference: dict[str, Any] = {"images": int(count)}
    if count:
        # A chunk at a time: the whole set in float64 would be 8x its uint8 size (8 GB for 7,000 at 224 px).
        means = np.concatenate([np.asarray(images_uint8[start:start + _STATS_CHUNK], dtype=np.float64)
                                .mean(axis=(2, 3)) for start in range(0, count, _STATS_CHUNK)])  # [N, 3]
        reference["colour_mean"] = [round(float(v), 2) for v in means.mean(axis=0)]
        reference["colour_std"] = [round(float(v), 2) for v in means.std(axis=0)]
    resolution = (make_up or {}).get("resolution") or {}
    for axis in ("width", "height"):
        median = (resolution.get(axis) or {}).get("median")
        if isinstance(median, int | float):
            reference[f"{axis}_median"] = float(median)
    return reference


def check_input(image_size: tuple[int, int], input_size: int, colour_mean: list[float] | None,
                reference: dict | None) -> InputCheck:
    """Warnings for one image (``image_size`` of the original; ``colour_mean``: its per-channel mean as the
    model sees it) against ``reference`` (reference_statistics; None for a card without one)."""
    width, height = image_size
    short, long = min(width, height), max(width, height)
    warnings: list[str] = []
    reference = reference if isinstance(reference, dict) else {}
    ref_w, ref_h = reference.get("width_median"), reference.get("height_median")
    if isinstance(ref_w, int | float) and isinstance(ref_h, int | float) and min(ref_w, ref_h) > 0:
        ref_short = min(ref_w, ref_h)
        ratio = short / ref_short
        if ratio > SIZE_RATIO or ratio < 1 / SIZE_RATIO:
            warnings.append(
                f"This image is {width} × {height} px; the images the model was tested on are about "
                f"{ref_w:g} × {ref_h:g} px. It is far from them in size, so the model's answer may not hold.")
        ref_aspect = max(ref_w, ref_h) / ref_short
        if long / short > ref_aspect * ASPECT_RATIO:
            warnings.append(
                f"This image's shape ({width} × {height}) differs from the images the model was tested on "
                f"(about {ref_w:g} × {ref_h:g}): the model sees only its centre square.")
    elif short / input_size > MAX_SHRINK:
        warnings.append(
            f"This {width} × {height} px image is shrunk {short / input_size:.0f}× to the model's "
            f"{input_size} px input: fine detail (such as microaneurysms) is lost at that size.")
    if short < input_size / 2:
        warnings.append(f"This image ({width} × {height} px) is much smaller than the model's {input_size} px "
                        "input and is enlarged: the model sees little detail.")
    means, spreads = reference.get("colour_mean"), reference.get("colour_std")
    counted = reference.get("images")
    enough = isinstance(counted, int) and counted >= MIN_COLOUR_IMAGES
    if colour_mean is not None and enough and _triple(means) and _triple(spreads):
        z = [abs(c - m) / max(s, MIN_COLOUR_SPREAD) for c, m, s in zip(colour_mean, means, spreads, strict=True)]
        if max(z) > COLOUR_Z:
            shown = ", ".join(f"{v:.0f}" for v in colour_mean)
            usual = ", ".join(f"{v:.0f}" for v in means)
            warnings.append(f"Its colours (mean red, green, blue {shown}) are far from those of the images the "
                            f"model was tested on ({usual}): it may be another kind of picture or camera.")
    return InputCheck(input_size=input_size, image_size=(width, height), warnings=warnings)


def _triple(value: Any) -> TypeGuard[list[float]]:
    return (isinstance(value, list) and len(value) == 3
            and all(isinstance(v, int | float) and math.isfinite(v) for v in value))
