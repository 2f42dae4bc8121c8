"""The image input of a Core ML package: the contract's preprocessing as Core ML's ImageType expresses it.

The input is an image, not a tensor: the app hands Core ML a pixel buffer and the model itself applies
the input contract, `tensor = (pixel / pixel_scale - mean) / std`. Core ML's ImageType has one scalar
`scale` and a per-channel `bias`, so a per-channel std (ImageNet's 0.229, 0.224, 0.225) cannot live in it;
then the ImageType does `pixel / pixel_scale - mean` and a fixed per-channel multiply by 1/std is traced
into the model in front of the user's module.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.artifact import Artifact
from core.contract import InputContract

INPUT_NAME = "image"


OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ImagePreprocessing:
    """What the model does to the pixels: tensor = channel_multipliers * (scale * pixel + bias)."""

    scale: float  # Core ML ImageType scale (one number)
    bias: tuple[float, ...]  # Core ML ImageType bias, one per channel, in the contract's channel order
    channel_multipliers: tuple[float, ...] | None  # 1/std folded into the model when std varies by channel
    color_layout: str  # "RGB", "BGR" or "G" (grayscale)

    def pixels_from_tensor(self, batch_nchw: np.ndarray) -> np.ndarray:
        """Undo the contract: preprocessed N x C x H x W tensors -> the pixel values (0..pixel_scale) behind them."""
        tensor = np.asarray(batch_nchw, dtype=np.float64)
        if self.channel_multipliers is not None:
            tensor = tensor / np.asarray(self.channel_multipliers).reshape(1, -1, 1, 1)
        pixels = (tensor - np.asarray(self.bias).reshape(1, -1, 1, 1)) / self.scale
        return pixels.astype(np.float32)


def image_preprocessing(contract: InputContract) -> ImagePreprocessing:
    mean, std, pixel_scale = np.asarray(contract.mean), np.asarray(contract.std), contract.pixel_scale
    layout = "G" if contract.channels == 1 else contract.color.upper()
    if np.all(std == std[0]):
        return ImagePreprocessing(float(1.0 / (pixel_scale * std[0])), tuple(float(v) for v in -mean / std), None, layout)
    return ImagePreprocessing(float(1.0 / pixel_scale), tuple(float(v) for v in -mean),
                              tuple(float(v) for v in 1.0 / std), layout)


def preprocessing_of(artifact: Artifact) -> ImagePreprocessing:
    """The image preprocessing an artifact's manifest details record (lists there, tuples here)."""
    return ImagePreprocessing(**{
        key: (tuple(value) if isinstance(value, list) else value)
        for key, value in artifact.details["input"].items() if key not in ("name", "type")
    })
