"""EfficientNet-B0 (Tan & Le, 2019) with torchvision's state_dict keys, and EfficientNet-Lite0, in plain torch.

B0 mirrors torchvision's efficientnet.py (features.N.M.block.K..., SE fc1/fc2, stochastic depth).
Lite0 is TensorFlow's mobile variant: ReLU6 instead of swish and no squeeze-excitation (both quantize
badly), stem and head widths fixed. torchvision has no Lite, so Lite0 reuses B0's key layout minus the SE.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from exporter.zoo.blocks import ConvNormActivation, SqueezeExcitation, make_divisible

# (expansion, kernel, first stride, in channels, out channels, repeats): Table 1 of the paper.
B0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
HEAD_CHANNELS = 1280


class StochasticDepth(nn.Module):
    """Drops the whole residual branch per sample while training ("row" mode of torchvision.ops)."""

    def __init__(self, probability: float):
        super().__init__()
        self.probability = probability

    def forward(self, x):
        if not self.training or self.probability == 0.0:
            return x
        survival = 1.0 - self.probability
        keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(survival)
        return x * keep / survival


class MBConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, expansion: int,
                 stochastic_depth: float, activation, use_se: bool):
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        expanded = make_divisible(in_channels * expansion)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormActivation(in_channels, expanded, 1, activation=activation))
        layers.append(ConvNormActivation(expanded, expanded, kernel, stride, groups=expanded, activation=activation))
        if use_se:
            layers.append(SqueezeExcitation(expanded, max(1, in_channels // 4), activation=partial(nn.SiLU, inplace=True)))
        layers.append(ConvNormActivation(expanded, out_channels, 1, activation=None))
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth)

    def forward(self, x):
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_residual else out


class EfficientNet(nn.Module):
    def __init__(self, lite: bool = False, num_classes: int = 1000, dropout: float = 0.2, stochastic_depth: float = 0.2):
        super().__init__()
        activation = nn.ReLU6 if lite else nn.SiLU
        layers: list[nn.Module] = [ConvNormActivation(3, B0_STAGES[0][3], 3, 2, activation=activation)]
        total_blocks = sum(stage[-1] for stage in B0_STAGES)
        block_index = 0
        for expansion, kernel, stride, in_channels, out_channels, repeats in B0_STAGES:
            blocks = []
            for repeat in range(repeats):
                blocks.append(MBConv(
                    in_channels if repeat == 0 else out_channels, out_channels, kernel, stride if repeat == 0 else 1,
                    expansion, stochastic_depth * block_index / total_blocks, activation, use_se=not lite,
                ))
                block_index += 1
            layers.append(nn.Sequential(*blocks))
        layers.append(ConvNormActivation(B0_STAGES[-1][4], HEAD_CHANNELS, 1, activation=activation))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(HEAD_CHANNELS, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                init_range = 1.0 / module.out_features**0.5
                nn.init.uniform_(module.weight, -init_range, init_range)
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def efficientnet_b0(num_classes: int = 1000) -> EfficientNet:
    return EfficientNet(lite=False, num_classes=num_classes)


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNet:
    return EfficientNet(lite=True, num_classes=num_classes)
