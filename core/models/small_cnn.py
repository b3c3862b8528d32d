"""A small convolutional network for tests, demos and quick runs at 32-128 px."""

from __future__ import annotations

import torch
from torch import nn


def _block(inplanes: int, planes: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inplanes, planes, kernel_size=3, padding=1, bias=False),
        nn.GroupNorm(min(8, planes // 4), planes),
        nn.ReLU(),
    )


class SmallCNN(nn.Module):
    """Four conv + GroupNorm + ReLU blocks (16-32-64-64 channels), global average pool, linear."""

    def __init__(self, num_classes: int = 5):
        super().__init__()
        self.features = nn.Sequential(
            _block(3, 16),
            nn.MaxPool2d(2),
            _block(16, 32),
            nn.MaxPool2d(2),
            _block(32, 64),
            nn.MaxPool2d(2),
            _block(64, 64),
        )
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))

    def gradcam_layer(self) -> nn.Module:
        return self.features[-1]
