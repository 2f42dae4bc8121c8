"""MobileNetV3-Large and -Small (Howard et al., 2019) in plain torch, with torchvision's state_dict keys.

Mirrors torchvision's mobilenetv3.py: features.N.block.M..., SE with hard-sigmoid gates and fc1/fc2,
BN eps 1e-3, classifier.0 / classifier.3 linears with hard-swish between them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from torch import nn

from exporter.zoo.blocks import ConvNormActivation, SqueezeExcitation, init_weights, make_divisible

_norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


@dataclass(frozen=True)
class Bneck:
    in_channels: int
    kernel: int
    expanded: int
    out_channels: int
    use_se: bool
    activation: str  # "RE" (ReLU) or "HS" (hard-swish), the paper's Table 1/2 notation
    stride: int


# Tables 1 and 2 of the paper, as torchvision's _mobilenet_v3_conf lists them.
LARGE = (
    Bneck(16, 3, 16, 16, False, "RE", 1), Bneck(16, 3, 64, 24, False, "RE", 2),
    Bneck(24, 3, 72, 24, False, "RE", 1), Bneck(24, 5, 72, 40, True, "RE", 2),
    Bneck(40, 5, 120, 40, True, "RE", 1), Bneck(40, 5, 120, 40, True, "RE", 1),
    Bneck(40, 3, 240, 80, False, "HS", 2), Bneck(80, 3, 200, 80, False, "HS", 1),
    Bneck(80, 3, 184, 80, False, "HS", 1), Bneck(80, 3, 184, 80, False, "HS", 1),
    Bneck(80, 3, 480, 112, True, "HS", 1), Bneck(112, 3, 672, 112, True, "HS", 1),
    Bneck(112, 5, 672, 160, True, "HS", 2), Bneck(160, 5, 960, 160, True, "HS", 1),
    Bneck(160, 5, 960, 160, True, "HS", 1),
)
LARGE_LAST_CHANNELS = 1280
SMALL = (
    Bneck(16, 3, 16, 16, True, "RE", 2), Bneck(16, 3, 72, 24, False, "RE", 2),
    Bneck(24, 3, 88, 24, False, "RE", 1), Bneck(24, 5, 96, 40, True, "HS", 2),
    Bneck(40, 5, 240, 40, True, "HS", 1), Bneck(40, 5, 240, 40, True, "HS", 1),
    Bneck(40, 5, 120, 48, True, "HS", 1), Bneck(48, 5, 144, 48, True, "HS", 1),
    Bneck(48, 5, 288, 96, True, "HS", 2), Bneck(96, 5, 576, 96, True, "HS", 1),
    Bneck(96, 5, 576, 96, True, "HS", 1),
)
SMALL_LAST_CHANNELS = 1024


class InvertedResidual(nn.Module):
    def __init__(self, config: Bneck, width_mult: float):
        super().__init__()
        in_channels = make_divisible(config.in_channels * width_mult)
        expanded = make_divisible(config.expanded * width_mult)
        out_channels = make_divisible(config.out_channels * width_mult)
        activation = nn.Hardswish if config.activation == "HS" else nn.ReLU
        self.use_residual = config.stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvNormActivation(in_channels, expanded, 1, activation=activation, norm=_norm))
        layers.append(ConvNormActivation(
            expanded, expanded, config.kernel, config.stride, groups=expanded, activation=activation, norm=_norm
        ))
        if config.use_se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4), scale_activation=nn.Hardsigmoid))
        layers.append(ConvNormActivation(expanded, out_channels, 1, activation=None, norm=_norm))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.block(x) if self.use_residual else self.block(x)


class MobileNetV3(nn.Module):
    def __init__(self, setting: tuple[Bneck, ...], last_channels: int, num_classes: int = 1000,
                 width_mult: float = 1.0, dropout: float = 0.2):
        super().__init__()
        first_channels = make_divisible(setting[0].in_channels * width_mult)
        layers: list[nn.Module] = [ConvNormActivation(3, first_channels, 3, 2, activation=nn.Hardswish, norm=_norm)]
        layers += [InvertedResidual(config, width_mult) for config in setting]
        lastconv_in = make_divisible(setting[-1].out_channels * width_mult)
        lastconv_out = 6 * lastconv_in
        layers.append(ConvNormActivation(lastconv_in, lastconv_out, 1, activation=nn.Hardswish, norm=_norm))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        last_channels = make_divisible(last_channels * width_mult)
        self.classifier = nn.Sequential(
            nn.Linear(lastconv_out, last_channels),
            nn.Hardswish(inplace=True),
            nn.Dropout(dropout, inplace=True),
            nn.Linear(last_channels, num_classes),
        )
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def mobilenet_v3_large(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV3:
    return MobileNetV3(LARGE, LARGE_LAST_CHANNELS, num_classes, width_mult)


def mobilenet_v3_small(num_classes: int = 1000, width_mult: float = 1.0) -> MobileNetV3:
    return MobileNetV3(SMALL, SMALL_LAST_CHANNELS, num_classes, width_mult)
