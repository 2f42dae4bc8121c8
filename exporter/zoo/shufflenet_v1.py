"""ShuffleNetV1 (Zhang et al., 2017) at 1x width, groups g in {1, 2, 3, 4, 8}, in plain torch.

torchvision has no ShuffleNetV1; the layout follows Megvii's reference (ShuffleNet-Series): each unit is
a grouped 1x1 conv, a channel shuffle, a 3x3 depthwise conv, a grouped 1x1 conv; stride-2 units concatenate
a 3x3 average-pooled shortcut. The first 1x1 of stage 2 is not grouped (its input has only 24 channels).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from exporter.zoo.blocks import channel_shuffle, init_weights

GROUPS = (1, 2, 3, 4, 8)
STAGE_REPEATS = (4, 8, 4)
STEM_CHANNELS = 24
# Output channels of stages 2..4 at 1x width, per group count: Table 1 of the paper.
STAGE_OUT_CHANNELS = {
    1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536),
}


class ShuffleUnit(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, stride: int, group_first_conv: bool = True):
        super().__init__()
        self.stride, self.groups = stride, groups
        bottleneck = out_channels // 4
        # A stride-2 unit concatenates its shortcut, so its main branch makes only the missing channels.
        branch_out = out_channels - in_channels if stride == 2 else out_channels
        self.compress = nn.Sequential(
            nn.Conv2d(in_channels, bottleneck, 1, groups=groups if group_first_conv else 1, bias=False),
            nn.BatchNorm2d(bottleneck),
            nn.ReLU(inplace=True),
        )
        self.depthwise = nn.Sequential(
            nn.Conv2d(bottleneck, bottleneck, 3, stride, 1, groups=bottleneck, bias=False), nn.BatchNorm2d(bottleneck)
        )
        self.expand = nn.Sequential(
            nn.Conv2d(bottleneck, branch_out, 1, groups=groups, bias=False), nn.BatchNorm2d(branch_out)
        )
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x):
        out = self.compress(x)
        if self.groups > 1:
            out = channel_shuffle(out, self.groups)
        out = self.expand(self.depthwise(out))
        if self.stride == 2:
            return torch.cat((self.shortcut(x), F.relu(out)), dim=1)
        return F.relu(out + x)


class ShuffleNetV1(nn.Module):
    def __init__(self, groups: int = 3, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(3, STEM_CHANNELS, 3, 2, 1, bias=False), nn.BatchNorm2d(STEM_CHANNELS), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        in_channels = STEM_CHANNELS
        for stage, repeats, out_channels in zip((2, 3, 4), STAGE_REPEATS, STAGE_OUT_CHANNELS[groups]):
            units = [ShuffleUnit(in_channels, out_channels, groups, 2, group_first_conv=stage != 2)]
            units += [ShuffleUnit(out_channels, out_channels, groups, 1) for _ in range(repeats - 1)]
            setattr(self, f"stage{stage}", nn.Sequential(*units))
            in_channels = out_channels
        self.fc = nn.Linear(in_channels, num_classes)
        init_weights(self)

    def forward(self, x):
        x = self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x)))))
        return self.fc(x.mean((2, 3)))


def shufflenet_v1(groups: int = 3, num_classes: int = 1000) -> ShuffleNetV1:
    return ShuffleNetV1(groups, num_classes)
