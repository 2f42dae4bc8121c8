"""An LR-ASPP segmenter (Howard et al., 2019, section 6.4) on a MobileNetV3-Small backbone, in plain torch.

The high branch (stride 16, the 48-channel stage) goes through a 1x1 convolution with batch norm and ReLU,
gated per channel by a sigmoid of its global average; upsampled to the low branch (stride 8, the 24-channel
stage), each branch is classified by a 1x1 convolution and the sum upsampled to the input. Without the paper's
dilated last stage: at the zoo's 128 pixels the stride-16 maps are 8 x 8, enough for the digits it segments,
and the stride-32 stage is not computed at all.

Output (a dict, so every artifact names it): `mask` N x classes x H x W, per-pixel class logits.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional

from exporter.zoo.mobilenet_v3 import mobilenet_v3_small

STRIDE_8_END = 4  # features[:4] ends with the 24-channel stage at stride 8
STRIDE_16_END = 9  # features[4:9] ends with the 48-channel stage at stride 16
LOW_CHANNELS, HIGH_CHANNELS, INNER_CHANNELS = 24, 48, 128


class LRASPP(nn.Module):
    def __init__(self, num_classes: int = 11):
        super().__init__()
        features = mobilenet_v3_small().features
        self.stride_8 = features[:STRIDE_8_END]
        self.stride_16 = features[STRIDE_8_END:STRIDE_16_END]
        self.high = nn.Sequential(nn.Conv2d(HIGH_CHANNELS, INNER_CHANNELS, 1, bias=False),
                                  nn.BatchNorm2d(INNER_CHANNELS), nn.ReLU(inplace=True))
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(HIGH_CHANNELS, INNER_CHANNELS, 1, bias=False),
                                  nn.Sigmoid())
        self.low_classifier = nn.Conv2d(LOW_CHANNELS, num_classes, 1)
        self.high_classifier = nn.Conv2d(INNER_CHANNELS, num_classes, 1)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.stride_8(images)
        high = self.stride_16(low)
        gated = self.high(high) * self.gate(high)
        gated = functional.interpolate(gated, size=low.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.low_classifier(low) + self.high_classifier(gated)
        return {"mask": functional.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)}


def lraspp_mobilenet_v3_small(num_classes: int = 11) -> LRASPP:
    return LRASPP(num_classes)
