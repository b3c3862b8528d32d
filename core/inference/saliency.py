"""Saliency heatmaps: Grad-CAM on the last convolutional block, occlusion where Grad-CAM cannot apply.

A heatmap is a float32 array in [0, 1] at the model's input resolution (the resized, center-cropped
picture the model sees). The colormap is a polynomial fit of Google's Turbo, written in numpy so the
engine needs no plotting library.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from core.errors import InferenceError, ModelError
from core.models.registry import last_conv_layer

GRAD_CAM = "grad-cam"
OCCLUSION = "occlusion"

# Below this (relative to the largest activation) a Grad-CAM map is flat: it says nothing, so occlusion
# is used instead.
_FLAT = 1e-8


@dataclass
class Saliency:
    heatmap: np.ndarray
    """float32 [H, W] in [0, 1], H x W = the model's input size."""
    method: str
    """GRAD_CAM or OCCLUSION."""
    target_index: int
    """The class the map explains."""


def compute_saliency(model: torch.nn.Module, batch: torch.Tensor, *, target_index: int | None = None) -> Saliency:
    """Grad-CAM for ``batch`` (one preprocessed image, [1, 3, H, W]); occlusion when the model has no
    usable convolutional layer or Grad-CAM gives a flat map (for example all-negative evidence)."""
    if batch.ndim != 4 or batch.shape[0] != 1:
        raise InferenceError("Saliency needs exactly one preprocessed image; this is a bug, please report it.")
    try:
        layer = last_conv_layer(model)
    except ModelError:
        layer = None
    if layer is not None:
        cam, target = grad_cam(model, batch, layer, target_index=target_index)
        if cam is not None:
            return Saliency(cam, GRAD_CAM, target)
    heatmap, target = occlusion(model, batch, target_index=target_index)
    return Saliency(heatmap, OCCLUSION, target)


def _target(logits: torch.Tensor, target_index: int | None) -> int:
    classes = logits.shape[1]
    if target_index is None:
        return int(logits[0].argmax())
    if not 0 <= target_index < classes:
        raise InferenceError(f"Class {target_index} does not exist; this model has {classes} classes.")
    return int(target_index)


def _normalize(cam: torch.Tensor) -> np.ndarray:
    low, high = float(cam.min()), float(cam.max())
    if high - low <= _FLAT * max(1.0, abs(high)):
        return np.zeros(tuple(cam.shape), dtype=np.float32)
    return ((cam - low) / (high - low)).clamp_(0.0, 1.0).numpy().astype(np.float32, copy=False)


def grad_cam(
    model: torch.nn.Module, batch: torch.Tensor, layer: torch.nn.Module, *, target_index: int | None = None
) -> tuple[np.ndarray | None, int]:
    """Grad-CAM (Selvaraju et al., 2017) of ``layer`` for one image; (None, target) when the map is flat
    or the layer's output is not a [1, C, h, w] feature map."""
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            # Requiring a gradient on the input keeps a graph even if the weights are frozen.
            x = batch.detach().clone().requires_grad_(True)
            logits = model(x)
            target = _target(logits, target_index)
            if len(captured) != 1 or not isinstance(captured[0], torch.Tensor) or captured[0].ndim != 4:
                return None, target
            activation = captured[0]
            (gradient,) = torch.autograd.grad(logits[0, target], activation)
    finally:
        handle.remove()
    weights = gradient.detach().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation.detach()).sum(dim=1, keepdim=True))
    if float(cam.max()) <= _FLAT:
        return None, target
    cam = F.interpolate(cam, size=tuple(batch.shape[-2:]), mode="bilinear", align_corners=False)[0, 0]
    heatmap = _normalize(cam)
    if not heatmap.any():
        return None, target
    return heatmap, target


def occlusion(
    model: torch.nn.Module, batch: torch.Tensor, *, target_index: int | None = None, grid: int = 7,
    chunk: int = 16,
) -> tuple[np.ndarray, int]:
    """Occlusion sensitivity (Zeiler and Fergus, 2014): how much the target class score drops when each
    cell of a ``grid`` x ``grid`` partition is replaced by the dataset mean (0 after normalization).

    The score is the logit, as for Grad-CAM: a confident model's probability saturates and barely moves."""
    height, width = batch.shape[-2:]
    with torch.inference_mode():
        logits = model(batch)
        target = _target(logits, target_index)
        base = logits[0, target].float()
        rows = np.linspace(0, height, grid + 1).round().astype(int)
        cols = np.linspace(0, width, grid + 1).round().astype(int)
        cells = [(r, c) for r in range(grid) for c in range(grid)]
        drops = torch.zeros(grid * grid)
        for start in range(0, len(cells), chunk):
            part = cells[start:start + chunk]
            occluded = batch.repeat(len(part), 1, 1, 1)
            for i, (r, c) in enumerate(part):
                occluded[i, :, rows[r]:rows[r + 1], cols[c]:cols[c + 1]] = 0.0
            drops[start:start + len(part)] = base - model(occluded)[:, target].float()
    drop_map = drops.clamp(min=0.0).reshape(1, 1, grid, grid)
    upsampled = F.interpolate(drop_map, size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    return _normalize(upsampled), target


# Turbo colormap (Mikhailov, Google 2019), degree-5 polynomial fit per channel, highest power first.
_TURBO = np.array([
    [59.28637943, -152.94239396, 132.13108234, -42.66032258, 4.61539260, 0.13572138],
    [2.82956604, 4.27729857, -14.18503333, 4.84296658, 2.19418839, 0.09140261],
    [27.34824973, -89.90310912, 110.36276771, -60.58204836, 12.64194608, 0.10667330],
])


def colorize(heatmap: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] for a heatmap in [0, 1] (blue = low, red = high)."""
    x = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, 1.0)
    rgb = np.stack([np.polyval(coefficients, x) for coefficients in _TURBO], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _resized(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if heatmap.shape[::-1] == tuple(size):
        return np.asarray(heatmap, dtype=np.float32)
    image = Image.fromarray(np.ascontiguousarray(heatmap, dtype=np.float32))
    return np.asarray(image.resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def heatmap_image(heatmap: np.ndarray, size: tuple[int, int] | None = None) -> Image.Image:
    """The colored heatmap as an RGB image, optionally resized to ``size`` (width, height)."""
    values = _resized(heatmap, size) if size is not None else heatmap
    return Image.fromarray(colorize(values))


def overlay(image: Image.Image, heatmap: np.ndarray, *, opacity: float = 0.45) -> Image.Image:
    """``image`` with the colored heatmap blended over it (the heatmap is stretched to the image)."""
    if not 0.0 <= opacity <= 1.0:
        raise InferenceError(f"Heatmap opacity must be between 0 and 1, not {opacity}.")
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    colors = colorize(_resized(heatmap, image.size)).astype(np.float32)
    blended = base * (1.0 - opacity) + colors * opacity
    return Image.fromarray((blended + 0.5).clip(0, 255).astype(np.uint8))
