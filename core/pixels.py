"""Pixel geometry shared by every floor: resizing, ImageNet-style center and ten crops, random crops."""
from __future__ import annotations

import numpy as np

# ImageNet-style evaluation: resize the short side to size / 0.875, then take the center crop.
CENTER_CROP_FRACTION = 0.875


def resize(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(pixels).resize((width, height), Image.BILINEAR), dtype=np.uint8)


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize so the crop covers CENTER_CROP_FRACTION of the short side, then cut the center."""
    scale = max(height, width) / CENTER_CROP_FRACTION / min(pixels.shape[:2])
    resized = resize(pixels, max(height, round(pixels.shape[0] * scale)), max(width, round(pixels.shape[1] * scale)))
    top = (resized.shape[0] - height) // 2
    left = (resized.shape[1] - width) // 2
    return resized[top : top + height, left : left + width]


def random_crop(pixels: np.ndarray, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 35-100 % of the photo's area, maybe mirrored: more views of a few photos."""
    rows, cols = pixels.shape[:2]
    area_fraction = rng.uniform(0.35, 1.0)
    side_ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    crop_h = int(min(rows, round(np.sqrt(area_fraction * rows * cols / side_ratio))))
    crop_w = int(min(cols, round(crop_h * side_ratio)))
    top = int(rng.integers(0, rows - crop_h + 1))
    left = int(rng.integers(0, cols - crop_w + 1))
    crop = pixels[top : top + crop_h, left : left + crop_w]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return resize(np.ascontiguousarray(crop), height, width)


def ten_crop(pixels: np.ndarray, height: int, width: int) -> list[np.ndarray]:
    """The standard ImageNet ten-crop evaluation: center and four corners of the resized photo, and mirrors."""
    scale = max(height, width) / CENTER_CROP_FRACTION / min(pixels.shape[:2])
    resized = resize(pixels, max(height, round(pixels.shape[0] * scale)), max(width, round(pixels.shape[1] * scale)))
    rows, cols = resized.shape[:2]
    corners = [((rows - height) // 2, (cols - width) // 2), (0, 0), (0, cols - width), (rows - height, 0),
               (rows - height, cols - width)]
    crops = [resized[top : top + height, left : left + width] for top, left in corners]
    return crops + [np.ascontiguousarray(crop[:, ::-1]) for crop in crops]
