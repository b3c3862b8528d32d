"""Where the retina is in a fundus photograph, and the local-average colour normalisation.

Cameras differ in black borders, field of view and where they put the retina in the frame, so a plain
"resize the short side, crop the centre" keeps different parts of the retina for different cameras.
``find_disc`` finds the retina's bright field against the dark surround: a threshold above a robust
background estimate, the largest component, then a least-squares circle through its edge, leaving out
edge points on the image border (a disc cut by the frame) and outliers (a notch, a printed label).
``crop_square`` cuts the disc's bounding square with a margin, padding with black where the disc runs
out of the frame. ``local_average_normalise`` is Ben Graham's 4*img - 4*blur(img) + 128 (Kaggle DR 2015,
much used on APTOS), which evens out illumination and colour differences between cameras.

An image with no dark surround (an already-cropped retina, a photograph of something else) gets
``Disc`` None with a reason, and the caller uses the plain pipeline instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

_WORKING_SIDE = 256  # detection runs on a copy this large: a few ms, and ample for a crop box
_MIN_CONTRAST = 20.0  # grey levels between the surround and the retina
_MIN_SURROUND = 0.03  # fraction of the image that must be dark for a "dark surround" to exist
_MIN_RETINA = 0.05  # fraction of the image the retina must cover
_MAX_SURROUND_LEVEL = 0.2  # the surround is at most this fraction of the retina's brightness


@dataclass(frozen=True)
class Disc:
    """The retina's circle in the image's pixels; ``partial`` when the frame cuts it."""

    cx: float
    cy: float
    radius: float
    partial: bool = False


@dataclass(frozen=True)
class DiscSearch:
    disc: Disc | None
    reason: str = ""
    """Why no disc was found (the plain pipeline is used then)."""


def find_disc(image: Image.Image) -> DiscSearch:
    """Find the retina's disc in an RGB fundus photograph (see the module docstring)."""
    from scipy import ndimage

    width, height = image.size
    if min(width, height) < 16:
        return DiscSearch(None, "the image is too small to find the retina")
    scale = min(1.0, _WORKING_SIDE / max(width, height))
    small = image.convert("RGB")
    if scale < 1.0:
        small = small.resize((max(8, round(width * scale)), max(8, round(height * scale))), Image.Resampling.BOX)
    # The brightest channel: the retina is bright in red even where green and blue are dark.
    level = np.asarray(small, dtype=np.float32).max(axis=2)
    level = ndimage.uniform_filter(level, size=3)
    background = float(np.percentile(level, 2))
    bright = float(np.percentile(level, 98))  # the retina may cover as little as a twentieth of the frame
    if bright - background < _MIN_CONTRAST:
        return DiscSearch(None, "no bright retina against a dark surround (too little contrast)")
    if background > _MAX_SURROUND_LEVEL * bright:
        # The darkest pixels are vessels or shadows of a retina that fills the frame, not a surround.
        return DiscSearch(None, "no dark surround around the retina (already cropped?)")
    threshold = background + max(8.0, 0.12 * (bright - background))
    mask = level > threshold
    if 1.0 - mask.mean() < _MIN_SURROUND:
        return DiscSearch(None, "no dark surround around the retina (already cropped?)")
    mask = ndimage.binary_opening(mask, iterations=2)
    labels, count = ndimage.label(mask)
    if count == 0:
        return DiscSearch(None, "no retina found")
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    retina = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    if retina.mean() < _MIN_RETINA:
        return DiscSearch(None, "the bright area is too small to be a retina")

    circle = _fit_circle(retina)
    if circle is None:
        return DiscSearch(None, "the retina's edge is not round")
    cx, cy, radius = circle
    rows, cols = retina.shape
    ys, xs = np.ogrid[0:rows, 0:cols]
    outside = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 > radius ** 2
    if outside.mean() < _MIN_SURROUND:
        return DiscSearch(None, "no dark surround around the retina (already cropped?)")
    partial = cx - radius < -1 or cy - radius < -1 or cx + radius > cols + 1 or cy + radius > rows + 1
    # Back to the full image: the working copy's pixel (i, j) covers [i/scale, (i+1)/scale).
    factor_x, factor_y = width / cols, height / rows
    return DiscSearch(Disc(cx=cx * factor_x, cy=cy * factor_y, radius=radius * (factor_x + factor_y) / 2,
                           partial=bool(partial)))


def _fit_circle(retina: np.ndarray) -> tuple[float, float, float] | None:
    """(cx, cy, r) in working-copy pixels (pixel centres at +0.5), or None when no circle fits."""
    from scipy import ndimage

    rows, cols = retina.shape
    edge = retina & ~ndimage.binary_erosion(retina)
    ys, xs = np.nonzero(edge)
    # Edge pixels on the image border are where the frame cuts the disc, not the disc's rim.
    inside = (xs > 1) & (xs < cols - 2) & (ys > 1) & (ys < rows - 2)
    xs, ys = xs[inside].astype(np.float64) + 0.5, ys[inside].astype(np.float64) + 0.5
    area = float(retina.sum())
    if xs.size >= 12:
        keep = np.ones(xs.size, dtype=bool)
        for _ in range(3):
            fit = _kasa(xs[keep], ys[keep])
            if fit is None:
                break
            cx, cy, r = fit
            residual = np.abs(np.hypot(xs - cx, ys - cy) - r)
            spread = max(1.0, 2.5 * float(np.median(residual[keep])) * 1.4826)
            new_keep = residual < max(spread, 1.5)
            if new_keep.sum() < 12 or np.array_equal(new_keep, keep):
                break
            keep = new_keep
        fit = _kasa(xs[keep], ys[keep])
        if fit is not None and _agrees_with_area(fit, retina, area):
            # The rim pixel centres lie half a pixel inside the true edge.
            return fit[0], fit[1], fit[2] + 0.5
    # No clean rim (e.g. a disc cut on three sides): the bounding box, whose longer side is the diameter.
    ys_all, xs_all = np.nonzero(retina)
    left, right = xs_all.min(), xs_all.max() + 1
    top, bottom = ys_all.min(), ys_all.max() + 1
    radius = max(right - left, bottom - top) / 2.0
    fit = ((left + right) / 2.0, (top + bottom) / 2.0, radius)
    return fit if _agrees_with_area(fit, retina, area, tolerance=0.35) else None


def _kasa(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float] | None:
    """Algebraic least-squares circle (Kasa): x^2 + y^2 + D x + E y + F = 0."""
    if xs.size < 3:
        return None
    matrix = np.column_stack([xs, ys, np.ones_like(xs)])
    target = -(xs ** 2 + ys ** 2)
    try:
        (d, e, f), *_ = np.linalg.lstsq(matrix, target, rcond=None)
    except np.linalg.LinAlgError:
        return None
    cx, cy = -d / 2.0, -e / 2.0
    squared = cx ** 2 + cy ** 2 - f
    if not np.isfinite(squared) or squared <= 0:
        return None
    return float(cx), float(cy), float(np.sqrt(squared))


def _agrees_with_area(fit: tuple[float, float, float], retina: np.ndarray, area: float,
                      tolerance: float = 0.15) -> bool:
    """The circle, clipped to the image, must cover about as many pixels as the retina does."""
    cx, cy, r = fit
    rows, cols = retina.shape
    if r < 0.1 * min(rows, cols) or r > 2.0 * max(rows, cols):
        return False
    ys, xs = np.ogrid[0:rows, 0:cols]
    circle = (xs + 0.5 - cx) ** 2 + (ys + 0.5 - cy) ** 2 <= r ** 2
    covered = float(circle.sum())
    if covered == 0:
        return False
    overlap = float((circle & retina).sum())
    return abs(covered - area) / covered <= tolerance and overlap / max(area, 1.0) >= 1.0 - tolerance


def crop_box(disc: Disc, margin: float) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of the square around ``disc`` with ``margin`` (a fraction of the radius)."""
    half = disc.radius * (1.0 + margin)
    return disc.cx - half, disc.cy - half, disc.cx + half, disc.cy + half


def crop_square(image: Image.Image, disc: Disc, margin: float, size: int) -> tuple[Image.Image, np.ndarray]:
    """The disc's bounding square with ``margin``, black where it leaves the frame, resized to ``size``;
    and bool [size, size], True where the square shows the photograph (not padding)."""
    left, top, right, bottom = crop_box(disc, margin)
    width, height = image.size
    inner = (max(0.0, left), max(0.0, top), min(float(width), right), min(float(height), bottom))
    scale = size / (right - left)
    out = Image.new("RGB", (size, size), (0, 0, 0))
    shown = np.zeros((size, size), dtype=bool)
    if inner[2] > inner[0] and inner[3] > inner[1]:
        x0, y0 = round((inner[0] - left) * scale), round((inner[1] - top) * scale)
        x1 = min(size, max(x0 + 1, round((inner[2] - left) * scale)))
        y1 = min(size, max(y0 + 1, round((inner[3] - top) * scale)))
        # resize with a box reads only that region and resamples (antialiased) straight to the target.
        part = image.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, box=inner, reducing_gap=3.0)
        out.paste(part, (x0, y0))
        shown[y0:y1, x0:x1] = True
    return out, shown


def local_average_normalise(image: Image.Image, disc_radius: float | None = None,
                            inside: np.ndarray | None = None) -> Image.Image:
    """4*img - 4*GaussianBlur(img) + 128, the blur's sigma a 30th of the retina's radius (Graham).

    ``inside``: bool [H, W] of the pixels that show retina; the rest becomes the neutral 128, so the frame
    and the padding do not ring. Without a disc the whole image is normalised.
    """
    radius = disc_radius if disc_radius is not None else min(image.size) / 2.0
    sigma = max(1.0, radius / 30.0)
    pixels = np.asarray(image, dtype=np.float32)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)), dtype=np.float32)
    out = np.clip(4.0 * pixels - 4.0 * blurred + 128.0, 0, 255)
    if inside is not None:
        out[~inside] = 128.0
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="RGB")


def disc_mask(size: int, margin: float, shrink: float = 0.96) -> np.ndarray:
    """bool [size, size]: inside the disc of a crop made by ``crop_square`` (slightly shrunk: the rim)."""
    radius = size / (2.0 * (1.0 + margin)) * shrink
    ys, xs = np.ogrid[0:size, 0:size]
    centre = size / 2.0
    return (xs + 0.5 - centre) ** 2 + (ys + 0.5 - centre) ** 2 <= radius ** 2
