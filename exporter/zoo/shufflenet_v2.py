"""ShuffleNetV2 (Ma et al., 2018) in plain torch, with torchvision's state_dict keys.

Mirrors torchvision's shufflenetv2.py: conv1, maxpool, stage2..4 of units with branch1/branch2, conv5, fc.
"""
from __future__ import annotations

import torch
from torch import nn

from exporter.zoo.blocks import channel_shuffle, init_weights

STAGE_REPEATS = (4, 8, 4)
# Output channels of conv1, stage2, stage3, stage4, conv5 per width: Table 5 of the paper.
STAGE_OUT_CHANNELS = {
    0.5: (24, 48, 96, 192, 1024),
    1.0: (24, 116, 232, 464, 1024),
    1.5: (24, 176, 352, 704, 1024),
    2.0: (24, 244, 488, 976, 2048),
}
WIDTHS = tuple(STAGE_OUT_CHANNELS)


def _depthwise(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 3, stride, 1, groups=channels, bias=False)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.stride = stride
        branch_channels = out_channels // 2
        if stride > 1:
            self.branch1 = nn.Sequential(
                _depthwise(in_channels, stride),
                nn.BatchNorm2d(in_channels),
                nn.Conv2d(in_channels, branch_channels, 1, bias=False),
                nn.BatchNorm2d(branch_channels),
                nn.ReLU(inplace=True),
            )
        else:
            self.branch1 = nn.Sequential()
        self.branch2 = nn.Sequential(
            nn.Conv2d(in_channels if stride > 1 else branch_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
            _depthwise(branch_channels, stride),
            nn.BatchNorm2d(branch_channels),
            nn.Conv2d(branch_channels, branch_channels, 1, bias=False),
            nn.BatchNorm2d(branch_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, x):
        if self.stride == 1:
            kept, processed = x.chunk(2, dim=1)
            out = torch.cat((kept, self.branch2(processed)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, width: float = 1.0, num_classes: int = 1000):
        super().__init__()
        channels = STAGE_OUT_CHANNELS[width]
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, channels[0], 3, 2, 1, bias=False), nn.BatchNorm2d(channels[0]), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = channels[0]
        for stage, repeats, out_channels in zip((2, 3, 4), STAGE_REPEATS, channels[1:4]):
            units = [InvertedResidual(in_channels, out_channels, 2)]
            units += [InvertedResidual(out_channels, out_channels, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{stage}", nn.Sequential(*units))
            in_channels = out_channels
        self.conv5 = nn.Sequential(
            nn.Conv2d(in_channels, channels[-1], 1, bias=False), nn.BatchNorm2d(channels[-1]), nn.ReLU(inplace=True)
        )
        self.fc = nn.Linear(channels[-1], num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(x.mean((2, 3)))


def shufflenet_v2(width: float = 1.0, num_classes: int = 1000) -> ShuffleNetV2:
    return ShuffleNetV2(width, num_classes)
