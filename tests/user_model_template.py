"""A user's own model package, copied outside the repository by the test fixtures.

It stands for code mobile-export has never seen: a small MobileNetV2-style network trained on real
handwritten digits (scikit-learn's load_digits), whose weights sit next to this module.
"""
from pathlib import Path

import torch
from torch import nn

WEIGHTS = Path(__file__).with_name("digits_net.pt")


def conv_bn(cin, cout, stride=1, groups=1, kernel=3, act=True):
    layers = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class Block(nn.Module):
    def __init__(self, cin, cout, stride, expand=4):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            conv_bn(cin, hidden, kernel=1), conv_bn(hidden, hidden, stride, groups=hidden), conv_bn(hidden, cout, kernel=1, act=False)
        )

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


class DigitsNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16, 2), Block(16, 16, 1), Block(16, 24, 2), Block(24, 24, 1), Block(24, 32, 2))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build() -> nn.Module:
    model = DigitsNet()
    if WEIGHTS.exists():
        model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model


class DigitsNetSeveralOutputs(nn.Module):
    """The digits model with three outputs in a dict, as detectors and segmenters return theirs: "scores" (N x 10),
    its last feature map "features" (N x 32 x 4 x 4, NCHW), and "detections" (N x 16 x 9): per cell of that map,
    4 box coordinates in pixels and 5 scores in 0..1 in one tensor, the layout that breaks int8 detectors."""

    def __init__(self, net: DigitsNet):
        super().__init__()
        self.net = net

    def forward(self, x):
        features = self.net.features(x)
        cells = features.permute(0, 2, 3, 1).reshape(x.shape[0], -1, features.shape[1])
        detections = torch.cat([16.0 + 8.0 * cells[..., :4], torch.sigmoid(cells[..., 4:9])], dim=-1)
        return {"scores": self.net.head(features.mean((2, 3))), "features": features, "detections": detections}


def build_several_outputs() -> nn.Module:
    return DigitsNetSeveralOutputs(build())
