"""MobileNetV1 (Howard et al., 2017) in plain torch: width multiplier alpha, any input resolution.

torchvision has no MobileNetV1, so the keys are ours (features.N.{0,1}.{0,1}: depthwise then pointwise,
each conv + BN + activation). ReLU6 rather than the paper's ReLU, as in the TF-slim checkpoints.
"""
from __future__ import annotations

from torch import nn

from exporter.zoo.blocks import ConvNormActivation, init_weights

WIDTH_MULTIPLIERS = (1.0, 0.75, 0.5, 0.25)
RESOLUTIONS = (224, 192, 160, 128)

# (output channels, stride) of the 13 depthwise-separable layers after the stem: Table 1 of the paper.
DEPTHWISE_SEPARABLE_SETTING = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
MIN_CHANNELS = 8  # TF-slim's min_depth


def _channels(base: int, alpha: float) -> int:
    return max(MIN_CHANNELS, int(base * alpha))


class DepthwiseSeparable(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__(
            ConvNormActivation(in_channels, in_channels, 3, stride, groups=in_channels, activation=nn.ReLU6),
            ConvNormActivation(in_channels, out_channels, 1, activation=nn.ReLU6),
        )


class MobileNetV1(nn.Module):
    def __init__(self, num_classes: int = 1000, alpha: float = 1.0, dropout: float = 0.2):
        super().__init__()
        in_channels = _channels(32, alpha)
        features: list[nn.Module] = [ConvNormActivation(3, in_channels, 3, 2, activation=nn.ReLU6)]
        for channels, stride in DEPTHWISE_SEPARABLE_SETTING:
            out_channels = _channels(channels, alpha)
            features.append(DepthwiseSeparable(in_channels, out_channels, stride))
            in_channels = out_channels
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_channels, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def mobilenet_v1(num_classes: int = 1000, alpha: float = 1.0) -> MobileNetV1:
    return MobileNetV1(num_classes=num_classes, alpha=alpha)
