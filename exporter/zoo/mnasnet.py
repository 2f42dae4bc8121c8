"""MnasNet 1.0 (Tan et al., 2019) in plain torch, with torchvision's mnasnet1_0 layout and state_dict keys.

torchvision's MNASNet is the paper's search result without squeeze-excitation (the B1 cell of the
reference TPU code, 4.38 M parameters), not the A1 cell with SE (3.9 M); we follow torchvision because
its checkpoints are the ones users have. Keys: layers.N..., classifier.1.
"""
from __future__ import annotations

from torch import nn

from exporter.zoo.blocks import make_divisible

# torchvision ports the TensorFlow BN momentum of 0.9997.
_BN_MOMENTUM = 1 - 0.9997
BASE_DEPTHS = (32, 16, 24, 40, 80, 96, 192, 320)
# (kernel, first stride, expansion, repeats) of the six inverted-residual stacks.
STACKS = ((3, 2, 3, 3), (5, 2, 3, 3), (5, 2, 6, 3), (3, 1, 6, 2), (5, 2, 6, 4), (3, 1, 6, 1))


class _InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expansion: int):
        super().__init__()
        mid = in_channels * expansion
        self.apply_residual = in_channels == out_channels and stride == 1
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, kernel_size, stride, kernel_size // 2, groups=mid, bias=False),
            nn.BatchNorm2d(mid, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=_BN_MOMENTUM),
        )

    def forward(self, x):
        return self.layers(x) + x if self.apply_residual else self.layers(x)


def _stack(in_channels, out_channels, kernel_size, stride, expansion, repeats) -> nn.Sequential:
    units = [_InvertedResidual(in_channels, out_channels, kernel_size, stride, expansion)]
    units += [_InvertedResidual(out_channels, out_channels, kernel_size, 1, expansion) for _ in range(repeats - 1)]
    return nn.Sequential(*units)


class MNASNet(nn.Module):
    def __init__(self, alpha: float = 1.0, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        depths = [make_divisible(depth * alpha) for depth in BASE_DEPTHS]
        layers: list[nn.Module] = [
            nn.Conv2d(3, depths[0], 3, padding=1, stride=2, bias=False),
            nn.BatchNorm2d(depths[0], momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(depths[0], depths[0], 3, padding=1, groups=depths[0], bias=False),
            nn.BatchNorm2d(depths[0], momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
            nn.Conv2d(depths[0], depths[1], 1, bias=False),
            nn.BatchNorm2d(depths[1], momentum=_BN_MOMENTUM),
        ]
        for index, (kernel, stride, expansion, repeats) in enumerate(STACKS, start=1):
            layers.append(_stack(depths[index], depths[index + 1], kernel, stride, expansion, repeats))
        layers += [
            nn.Conv2d(depths[7], 1280, 1, bias=False),
            nn.BatchNorm2d(1280, momentum=_BN_MOMENTUM),
            nn.ReLU(inplace=True),
        ]
        self.layers = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(dropout, inplace=True), nn.Linear(1280, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_uniform_(module.weight, mode="fan_out", nonlinearity="sigmoid")
                nn.init.zeros_(module.bias)

    def forward(self, x):
        return self.classifier(self.layers(x).mean((2, 3)))


def mnasnet1_0(num_classes: int = 1000) -> MNASNet:
    return MNASNet(1.0, num_classes)
