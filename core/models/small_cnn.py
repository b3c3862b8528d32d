"""A small convolutional network for tests, demos and quick runs at 32-128 px.

It must train without BatchNorm (DP-SGD forbids batch statistics), and fundus photographs make that hard:
every image shares the same large structure (black border, bright disc of retina, vessels, optic disc)
and the grade lives in a few small lesions. Per-image normalisation (GroupNorm) lets the features settle
on that shared structure, so the pooled features barely differ between images; their large common part
makes the classifier ill-conditioned and, with SGD at usual learning rates, training collapses to
predicting the majority class. Three per-example (hence DP-compatible) choices fix that:

- the input is standardised per image and per colour channel, so exposure and colour cast do not
  dominate the first layer;
- the pooled features are centred and scaled per image (a LayerNorm without parameters), which removes
  most of their common part and keeps the classifier well-conditioned;
- global max pooling sits beside average pooling: a lesion lights up a few positions, and the average
  alone dilutes it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(inplanes: int, planes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inplanes, planes, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(min(8, planes), planes),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """Per-image input standardisation, four conv + GroupNorm + ReLU blocks (16-32-64-64 channels),
    global average and max pooling, each normalised per image and summed, and a linear classifier."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.input_norm = nn.GroupNorm(3, 3)
        self.features = nn.Sequential(
            _block(3, 16),
            nn.MaxPool2d(2),
            _block(16, 32),
            nn.MaxPool2d(2),
            _block(32, 64),
            nn.MaxPool2d(2),
            _block(64, 64),
        )
        self.classifier = nn.Linear(64, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # A near-zero classifier starts at the uniform prediction instead of random per-image logits, whose
        # gradients otherwise push the features towards the shared structure before anything is learnt
        # (not exactly zero: an untrained model still has a meaningful Grad-CAM).
        nn.init.normal_(self.classifier.weight, std=1e-3)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(self.input_norm(x))
        mean = h.mean(dim=(2, 3))
        peak = h.amax(dim=(2, 3))
        return self.classifier(F.layer_norm(mean, mean.shape[1:]) + F.layer_norm(peak, peak.shape[1:]))

    def gradcam_layer(self) -> nn.Module:
        return self.features[-1]
