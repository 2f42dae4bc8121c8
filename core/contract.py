"""The input contract: what the app must feed the model, and the one place it is applied."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.errors import InputError

ColorOrder = Literal["rgb", "bgr"]


@dataclass(frozen=True)
class InputContract:
    """tensor = (pixel / pixel_scale - mean) / std, channels in `color` order, laid out NCHW."""

    input_shape: tuple[int, int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    color: ColorOrder = "rgb"
    pixel_scale: float = 255.0

    def __post_init__(self) -> None:
        if len(self.input_shape) != 4 or any(d <= 0 for d in self.input_shape):
            raise InputError(
                f"input shape {self.input_shape} is not a positive N,C,H,W shape",
                hint="pass --input-shape like 1,3,224,224 (batch, channels, height, width)",
            )
        channels = self.input_shape[1]
        if channels not in (1, 3):
            raise InputError(
                f"input shape {self.input_shape} has {channels} channels; image models take 1 or 3",
                hint="pass --input-shape N,C,H,W with C = 3 for color or 1 for grayscale",
            )
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels:
                raise InputError(
                    f"--{name} has {len(values)} values but the input has {channels} channels",
                    hint=f"give one --{name} value per channel, e.g. --{name} "
                    + ",".join(["0.5"] * channels),
                )
        if not all(math.isfinite(v) for v in (*self.mean, *self.std, self.pixel_scale)):
            raise InputError("--mean, --std and --pixel-scale must be finite numbers", hint="e.g. --std 0.229,0.224,0.225")
        if any(s == 0 for s in self.std):
            raise InputError("--std contains 0", hint="std values divide the pixels; use non-zero values")
        if self.color not in ("rgb", "bgr"):
            raise InputError(f"--color {self.color!r} is not rgb or bgr", hint="pass --color rgb or --color bgr")
        if self.pixel_scale <= 0:
            raise InputError("--pixel-scale must be positive", hint="use 255 for 8-bit images scaled to [0, 1]")

    @property
    def channels(self) -> int:
        return self.input_shape[1]

    @property
    def height(self) -> int:
        return self.input_shape[2]

    @property
    def width(self) -> int:
        return self.input_shape[3]

    def preprocess(self, rgb_image: np.ndarray) -> np.ndarray:
        """One HxWx3 uint8 RGB image already resized to the input size -> CxHxW float32 tensor."""
        pixels = rgb_image.astype(np.float32)
        if self.channels == 1:
            pixels = pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            pixels = pixels[:, :, None]
        elif self.color == "bgr":
            pixels = pixels[:, :, ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        tensor = (pixels / np.float32(self.pixel_scale) - mean) / std
        return np.ascontiguousarray(tensor.transpose(2, 0, 1), dtype=np.float32)

    def to_manifest(self) -> dict:
        return {
            "input_shape": list(self.input_shape),
            "layout": "NCHW",
            "color": self.color,
            "pixel_scale": self.pixel_scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "formula": "tensor = (pixel / pixel_scale - mean) / std",
        }
