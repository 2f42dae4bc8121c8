"""Real handwritten digits on real photographs, with their true boxes and masks: what the zoo's detector and
segmenter are trained and checked on.

Each scene is a crop of one of the built-in photos (exporter/images.py) with one to three of scikit-learn's
handwritten digit scans (1,797 real 8x8 scans) pasted on it, each scaled to 20-44 pixels and inked in a color
that stands out from the photo under it. The ink's opacity is the scan's own grey level, so a digit's edge
is as soft as the scan's. Its box is the tight box of its visible ink, its mask the pixels where ink covers
more than half. Training scenes use the calibration photos and the first TRAIN_COUNT digits; held-out scenes
use the photos and digits training never saw (exporter/images.split_builtin, digits.TRAIN_COUNT), so parity
and quality are measured on new backgrounds with new handwriting.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.pixels import random_crop, resize
from exporter.zoo import TASK_INPUT_SIZE

SCENE_SIZE = TASK_INPUT_SIZE
DIGIT_SIDES = (20, 44)  # pixels, the pasted scan's side
MOST_DIGITS = 3
BACKGROUND = 0  # class 0 of the masks and of the detector's scores; digit d is class d + 1
CLASSES = 11
VISIBLE_INK = 0.25  # opacity from which a pixel counts toward a digit's box
MASK_INK = 0.5  # opacity from which a pixel belongs to the digit in the mask


@dataclass(frozen=True)
class Scenes:
    photos: np.ndarray  # N x H x W x 3 uint8
    masks: np.ndarray  # N x H x W uint8 class per pixel
    boxes: tuple[np.ndarray, ...]  # per scene, K x 4 float32 x1, y1, x2, y2 (pixels, x2/y2 exclusive)
    labels: tuple[np.ndarray, ...]  # per scene, K int64 class (digit + 1)


def training_scenes(count: int, seed: int = 0, size: int = SCENE_SIZE) -> Scenes:
    return _scenes(count, seed, size, held_out=False)


def held_out_scenes(count: int, seed: int = 1, size: int = SCENE_SIZE) -> Scenes:
    return _scenes(count, seed, size, held_out=True)


def _scenes(count: int, seed: int, size: int, held_out: bool) -> Scenes:
    from sklearn.datasets import load_digits

    from exporter.images import builtin_photos, split_builtin
    from exporter.zoo.digits import TRAIN_COUNT

    calibration_photos, validation_photos = split_builtin(builtin_photos())
    backgrounds = [photo.pixels for photo in (validation_photos if held_out else calibration_photos)]
    digits = load_digits()
    chosen = slice(TRAIN_COUNT, None) if held_out else slice(0, TRAIN_COUNT)
    scans, digit_labels = digits.images[chosen] / 16.0, digits.target[chosen]
    rng = np.random.default_rng(seed)
    photos, masks, boxes, labels = [], [], [], []
    for _ in range(count):
        background = backgrounds[int(rng.integers(len(backgrounds)))]
        scene = _paste_digits(random_crop(background, size, size, rng), scans, digit_labels, rng)
        photos.append(scene[0])
        masks.append(scene[1])
        boxes.append(scene[2])
        labels.append(scene[3])
    return Scenes(np.stack(photos), np.stack(masks), tuple(boxes), tuple(labels))


def _paste_digits(photo: np.ndarray, scans: np.ndarray, digit_labels: np.ndarray, rng: np.random.Generator):
    size = photo.shape[0]
    pixels = photo.astype(np.float32)
    mask = np.full(photo.shape[:2], BACKGROUND, np.uint8)
    boxes, labels, taken = [], [], []
    for _ in range(int(rng.integers(1, MOST_DIGITS + 1))):
        side = int(rng.integers(DIGIT_SIDES[0], DIGIT_SIDES[1] + 1))
        place = _free_place(side, size, taken, rng)
        if place is None:
            continue
        top, left = place
        index = int(rng.integers(len(scans)))
        opacity = resize((scans[index] * 255).astype(np.uint8), side, side).astype(np.float32) / 255.0
        region = pixels[top:top + side, left:left + side]
        ink = _contrasting_ink(region, rng)
        region[...] = region * (1 - opacity[:, :, None]) + ink * opacity[:, :, None]
        rows, columns = np.nonzero(opacity >= VISIBLE_INK)
        boxes.append((left + columns.min(), top + rows.min(), left + columns.max() + 1, top + rows.max() + 1))
        labels.append(int(digit_labels[index]) + 1)
        mask[top:top + side, left:left + side][opacity >= MASK_INK] = labels[-1]
        taken.append((top, left, side))
    return (np.clip(np.round(pixels), 0, 255).astype(np.uint8), mask, np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int64))


def _free_place(side: int, size: int, taken: list, rng: np.random.Generator, tries: int = 20):
    """A top-left corner where a side x side digit overlaps no digit already pasted, or None."""
    for _ in range(tries):
        top, left = (int(v) for v in rng.integers(0, size - side + 1, 2))
        if all(top >= t + s or t >= top + side or left >= l + s or l >= left + side for t, l, s in taken):
            return top, left
    return None


def _contrasting_ink(region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random color, dark on a bright region and bright on a dark one, so the digit can be seen."""
    bright_region = region.mean() > 110
    low, high = (0, 70) if bright_region else (185, 256)
    return rng.integers(low, high, 3).astype(np.float32)


CALIBRATION_SCENES = 200  # training scenes the int8 export calibrates on
VALIDATION_SCENES = 150  # held-out scenes parity is measured on


def export_defaults() -> dict:
    """The input shape and the calibration / validation scenes an export of a zoo task model defaults to
    (written to the cache once, as .npy of uint8 photos)."""
    from core.manifest import write_atomically
    from exporter.zoo.digits import cache_dir

    folder = cache_dir() / "data"
    folder.mkdir(parents=True, exist_ok=True)
    calibration = folder / f"scenes_{SCENE_SIZE}_calibration.npy"
    validation = folder / f"scenes_{SCENE_SIZE}_held_out.npy"
    if not calibration.is_file():
        write_atomically(calibration, lambda path: np.save(path, training_scenes(CALIBRATION_SCENES).photos))
    if not validation.is_file():
        write_atomically(validation, lambda path: np.save(path, held_out_scenes(VALIDATION_SCENES).photos))
    return {"input_shape": (1, 3, SCENE_SIZE, SCENE_SIZE), "calib": str(calibration), "val": str(validation)}
