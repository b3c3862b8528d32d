"""Heatmaps: shape and range, they follow the evidence, and the numpy colormap and overlay."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from core.errors import InferenceError
from core.inference import GRAD_CAM, OCCLUSION, colorize, compute_saliency, heatmap_image, open_model, overlay


class BrightnessNet(nn.Module):
    """Class 1's logit grows with image brightness wherever it is, so the evidence is where it is bright."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.fill_(1.0 / 27)
            self.conv.bias.zero_()
            self.fc.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


class NoConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 16 * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(x, 1))


def bright_square_batch(size: int = 32, corner: str = "top_left") -> torch.Tensor:
    x = torch.zeros(1, 3, size, size)
    half = size // 2
    if corner == "top_left":
        x[..., 2:half - 2, 2:half - 2] = 2.0
    else:
        x[..., half + 2:size - 2, half + 2:size - 2] = 2.0
    return x


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(heatmap), heatmap.shape))


def test_grad_cam_points_at_the_evidence():
    model = BrightnessNet().eval()
    top_left = compute_saliency(model, bright_square_batch(corner="top_left"), target_index=1)
    bottom_right = compute_saliency(model, bright_square_batch(corner="bottom_right"), target_index=1)
    assert top_left.method == GRAD_CAM and top_left.target_index == 1
    row, col = peak(top_left.heatmap)
    assert row < 16 and col < 16
    row, col = peak(bottom_right.heatmap)
    assert row >= 16 and col >= 16
    assert top_left.heatmap[4:12, 4:12].mean() > 3 * top_left.heatmap[20:28, 20:28].mean()


def test_occlusion_is_used_without_a_conv_layer_and_points_at_the_evidence():
    model = NoConvNet().eval()
    with torch.no_grad():
        model.fc.weight.zero_()
        # Class 1 reads only the top-left 8x8 corner of every channel.
        weight = torch.zeros(3, 16, 16)
        weight[:, :8, :8] = 1.0
        model.fc.weight[1] = weight.flatten()
    x = torch.ones(1, 3, 16, 16)
    saliency = compute_saliency(model, x, target_index=1)
    assert saliency.method == OCCLUSION
    assert saliency.heatmap.shape == (16, 16) and saliency.heatmap.dtype == np.float32
    assert saliency.heatmap[:6, :6].mean() > saliency.heatmap[10:, 10:].mean() + 0.5


def test_flat_grad_cam_falls_back_to_occlusion():
    model = BrightnessNet().eval()
    # Class 0 has only negative evidence: Grad-CAM's ReLU leaves nothing.
    saliency = compute_saliency(model, bright_square_batch(), target_index=0)
    assert saliency.method == OCCLUSION
    assert saliency.heatmap.shape == (32, 32)


def test_heatmap_shape_range_and_it_changes_with_the_input(package_path, kit):
    predictor = open_model(package_path)
    first = predictor.saliency(kit.random_image(1, (80, 60)))
    second = predictor.saliency(kit.random_image(2, (80, 60)))
    for saliency in (first, second):
        assert saliency.method == GRAD_CAM
        assert saliency.heatmap.shape == (kit.SIZE, kit.SIZE)
        assert saliency.heatmap.dtype == np.float32
        assert saliency.heatmap.min() >= 0.0 and saliency.heatmap.max() == pytest.approx(1.0)
        assert np.isfinite(saliency.heatmap).all()
    assert not np.allclose(first.heatmap, second.heatmap, atol=1e-3)


def test_saliency_explains_the_predicted_class_by_default(package_path, kit):
    predictor = open_model(package_path)
    image = kit.random_image(9)
    prediction = predictor.predict_image(image)
    assert predictor.saliency(image).target_index == prediction.predicted_index
    with pytest.raises(InferenceError):
        predictor.saliency(image, target_index=99)


def test_colorize_goes_from_blue_to_red():
    colors = colorize(np.array([[0.1, 0.5, 0.9]], dtype=np.float32))
    assert colors.shape == (1, 3, 3) and colors.dtype == np.uint8
    low, middle, high = colors[0].astype(int)
    assert low[2] > max(low[0], low[1]) + 100       # cold is blue
    assert middle[1] > max(middle[0], middle[2])    # middle is green
    assert high[0] > max(high[1], high[2]) + 100    # hot is red
    assert colorize(np.array([[-1.0, 2.0]])).tolist() == colorize(np.array([[0.0, 1.0]])).tolist()


def test_overlay_blends_at_the_given_opacity():
    image = Image.new("RGB", (40, 30), (10, 200, 30))
    heatmap = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16)
    assert overlay(image, heatmap, opacity=0.0).tobytes() == image.tobytes()
    full = overlay(image, heatmap, opacity=1.0)
    assert full.size == (40, 30)
    assert full.tobytes() == heatmap_image(heatmap, (40, 30)).tobytes()
    half = np.asarray(overlay(image, heatmap, opacity=0.5), dtype=int)
    expected = (np.asarray(image, dtype=int) + np.asarray(full, dtype=int)) / 2
    assert np.abs(half - expected).max() <= 1
    with pytest.raises(InferenceError):
        overlay(image, heatmap, opacity=1.5)
