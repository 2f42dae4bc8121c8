"""An SSDLite detector (Sandler et al., 2018, section 6.2) on a MobileNetV2 backbone, in plain torch.

Two feature maps (stride 16: the 96-channel stage, stride 32: the 320-channel one), each with SSDLite heads
(3x3 depthwise, batch norm, ReLU6, then a 1x1 convolution) predicting, for every anchor, four box offsets and
one score per class (class 0 is background). The model decodes its boxes itself, so the app and parity get
boxes in input pixels: each corner is the anchor's corner moved by its offset times the anchor's side
(`decode`). The decoding is linear (no exp, as SSD's log-size offsets need), so an int8 model computes it
with the same integer kernels as the rest.

Outputs (a dict, so every artifact names them): `boxes` N x anchors x 4 (x1, y1, x2, y2, pixels) and `scores`
N x anchors x classes (softmax probabilities).
"""
from __future__ import annotations

import torch
from torch import nn

from exporter.zoo.mobilenet_v2 import ConvBNActivation, MobileNetV2

STRIDE_16_END = 14  # features[:14] ends with the 96-channel stage at stride 16
STRIDE_32_END = 18  # features[14:18] ends with the 320-channel stage at stride 32, before the 1280 conv
LEVELS = ((16, 96, (24.0, 34.0)), (32, 320, (48.0, 68.0)))  # (stride, channels, square anchor sides)
TALL = 0.7  # a third anchor per place, as wide as TALL of the first side: handwriting is taller than wide
OFFSET_SCALE = 0.2  # a corner moves by offset x OFFSET_SCALE x the anchor's side


def anchor_shapes(sides: tuple[float, float]) -> list[tuple[float, float]]:
    """(width, height) of the anchors at one place."""
    return [(sides[0], sides[0]), (sides[1], sides[1]), (sides[0] * TALL, sides[0])]


ANCHORS_PER_PLACE = len(anchor_shapes((1.0, 1.0)))


def anchor_boxes(input_size: int) -> torch.Tensor:
    """A x 4 anchors (x1, y1, x2, y2) in the order the heads predict them: level, row, column, shape."""
    boxes = []
    for stride, _, sides in LEVELS:
        cells = input_size // stride
        for row in range(cells):
            for column in range(cells):
                center_x, center_y = (column + 0.5) * stride, (row + 0.5) * stride
                for width, height in anchor_shapes(sides):
                    boxes.append((center_x - width / 2, center_y - height / 2,
                                  center_x + width / 2, center_y + height / 2))
    return torch.tensor(boxes, dtype=torch.float32)


def decode(anchors: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Boxes from anchors (A x 4) and offsets (N x A x 4)."""
    sides = (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2)
    return anchors + offsets * (sides * OFFSET_SCALE)


def encode(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """The offsets that `decode` turns into `boxes` (A x 4 each)."""
    sides = (anchors[:, 2:] - anchors[:, :2]).repeat(1, 2)
    return (boxes - anchors) / (sides * OFFSET_SCALE)


class SSDLiteHead(nn.Module):
    def __init__(self, channels: int, outputs: int):
        super().__init__()
        self.depthwise = ConvBNActivation(channels, channels, groups=channels)
        self.pointwise = nn.Conv2d(channels, outputs, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """N x C x H x W -> N x (H x W x anchors) x values."""
        predicted = self.pointwise(self.depthwise(features))
        batch, _, height, width = predicted.shape
        return predicted.permute(0, 2, 3, 1).reshape(batch, height * width * ANCHORS_PER_PLACE, -1)


class SSDLite(nn.Module):
    def __init__(self, num_classes: int = 11, input_size: int = 128):
        super().__init__()
        features = MobileNetV2().features
        self.stride_16 = features[:STRIDE_16_END]
        self.stride_32 = features[STRIDE_16_END:STRIDE_32_END]
        self.box_heads = nn.ModuleList(SSDLiteHead(channels, ANCHORS_PER_PLACE * 4) for _, channels, _ in LEVELS)
        self.score_heads = nn.ModuleList(SSDLiteHead(channels, ANCHORS_PER_PLACE * num_classes)
                                         for _, channels, _ in LEVELS)
        self.register_buffer("anchors", anchor_boxes(input_size), persistent=False)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        offsets, logits = self.raw(images)
        return {"boxes": decode(self.anchors, offsets), "scores": torch.softmax(logits, dim=-1)}

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Offsets and class logits, for training."""
        first = self.stride_16(images)
        levels = (first, self.stride_32(first))
        offsets = torch.cat([head(level) for head, level in zip(self.box_heads, levels)], dim=1)
        logits = torch.cat([head(level) for head, level in zip(self.score_heads, levels)], dim=1)
        return offsets, logits


def ssdlite_mobilenet_v2(num_classes: int = 11, input_size: int = 128) -> SSDLite:
    return SSDLite(num_classes, input_size)
