"""Canaries for the privacy audit, and the one place they are injected.

White-box gradient canaries ("Dirac" canaries, Nasr et al. 2023): canary j's clipped gradient is
-C e_j, a direction of its own, in every step that samples it. They enter the training data as
images, so Poisson sampling, clipping, noise, the optimizer and secure aggregation are the
product's code, untouched: a canary image is constant in each colour channel (so flips and the
per-channel normalisation keep it recognisable), with its index in channels 0 and 1 and a marker
in channel 2. CanaryHarness wraps the model being trained: for a canary image it outputs uniform
logits that do not depend on the model (so the model's gradient for it is exactly zero), plus a
term whose value is zero and whose gradient is a large multiple of e_j on the harness's own
canary weight; clipping scales that to norm C exactly. For any other image it is the model.

An excluded canary leaves a filler in its place (marker FILLER_MARKER): uniform logits and a zero
gradient, so it adds nothing to any clipped sum. The number of training examples, hence q, the
batches per epoch and every normalisation, is then the same whichever canaries are in, and
including canary j differs from excluding it by exactly one record's clipped gradient: the
add/remove neighbours the accountant analyses (a q that moved with the coins would not be).

The harness is the injection hook. It exists only as an object this package constructs around a
freshly built model on synthetic data: it is not in the model registry (so no model file, plan,
training config or federation can name it), and nothing outside core.privacy_audit imports this
module (tests/core/privacy/test_audit_isolation.py checks both).

Black-box input canaries are out-of-distribution images (uniform noise) with random labels; the
attacker sees only the final model and scores each by its loss.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from core.data.preprocess import Preprocessing
from core.privacy.per_sample import declare_per_example_safe

CANARY_MARKER = 0xA5
FILLER_MARKER = 0x5A
MAX_GRADIENT_CANARIES = 256 * 256
# A canary's gradient norm before clipping, in units of C: far above 1 so clipping sets it to C.
_GAIN = 1e3


def gradient_canary_images(count: int, size: int) -> torch.Tensor:
    """uint8 [count, 3, size, size]: canary j constant per channel, (j // 256, j % 256, marker)."""
    if not 0 <= count <= MAX_GRADIENT_CANARIES:
        raise ValueError(f"at most {MAX_GRADIENT_CANARIES} gradient canaries")
    index = torch.arange(count)
    values = torch.stack([index // 256, index % 256, torch.full_like(index, CANARY_MARKER)], dim=1)
    return values.to(torch.uint8)[:, :, None, None].expand(count, 3, size, size).contiguous()


def filler_images(count: int, size: int) -> torch.Tensor:
    """uint8 [count, 3, size, size]: the stand-in for an excluded canary (zero gradient, no output)."""
    values = torch.tensor([0, 0, FILLER_MARKER], dtype=torch.uint8)
    return values[None, :, None, None].expand(count, 3, size, size).contiguous()


def input_canaries(count: int, size: int, num_classes: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Out-of-distribution images (uniform noise pixels) with random labels: (uint8 images, int64 labels)."""
    images = torch.from_numpy(rng.integers(0, 256, size=(count, 3, size, size), dtype=np.uint8))
    labels = torch.from_numpy(rng.integers(0, num_classes, size=count).astype(np.int64))
    return images, labels


@declare_per_example_safe
class CanaryHarness(nn.Module):
    """``model`` plus one weight per gradient canary (``self.canary``, Linear(canaries, 1), zero at
    the start). Row by row: a canary image's output depends on its own row only and never on the
    model; any other image's output is the model's. So examples stay independent, as DP-SGD needs."""

    def __init__(self, model: nn.Module, *, canaries: int, num_classes: int, spec: Preprocessing,
                 max_grad_norm: float) -> None:
        super().__init__()
        if not 1 <= canaries <= MAX_GRADIENT_CANARIES:
            raise ValueError(f"between 1 and {MAX_GRADIENT_CANARIES} gradient canaries")
        self.model = model
        self.canary = nn.Linear(canaries, 1, bias=False)
        nn.init.zeros_(self.canary.weight)
        self.canaries = canaries
        self.num_classes = num_classes
        # Plain attributes, not buffers: they are not trained and not part of any state dict.
        self._mean = tuple(spec.mean)
        self._std = tuple(spec.std)
        # dL/ds of a canary row is 1/K - 1 (uniform logits, label 0), so its gradient has this norm
        # times the feature value; _GAIN * C of it is clipped back to C.
        self._feature = _GAIN * max_grad_norm / (1.0 - 1.0 / num_classes)

    def canary_index(self, x: torch.Tensor) -> torch.Tensor:
        """For each normalised image in ``x``: its gradient canary's index, -2 for a filler, -1 for
        any other image."""
        flat = x.detach().flatten(2)
        constant = (flat.amax(dim=2) == flat.amin(dim=2)).all(dim=1)
        mean = torch.tensor(self._mean, dtype=x.dtype, device=x.device)
        std = torch.tensor(self._std, dtype=x.dtype, device=x.device)
        pixels = torch.round((flat[:, :, 0] * std + mean) * 255.0)
        index = pixels[:, 0] * 256 + pixels[:, 1]
        is_canary = constant & (pixels[:, 2] == CANARY_MARKER) & (index >= 0) & (index < self.canaries)
        is_filler = constant & (pixels[:, 2] == FILLER_MARKER)
        index = torch.where(is_canary, index, torch.full_like(index, -1))
        return torch.where(is_filler, torch.full_like(index, -2), index).long()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        index = self.canary_index(x)
        is_canary = index >= 0
        detached = index != -1  # canaries and fillers: outputs that do not depend on the model
        features = x.new_zeros((x.shape[0], self.canaries))
        rows = torch.nonzero(is_canary).flatten()
        features[rows, index[rows]] = self._feature
        s = self.canary(features)  # [n, 1]; only canary rows have a non-zero gradient on the weight
        push = s - s.detach()  # zero in value: the canary weight never changes any output
        keep = (~detached).to(logits.dtype).unsqueeze(1)
        return logits * keep + torch.cat([push, push.new_zeros((x.shape[0], logits.shape[1] - 1))], dim=1)
