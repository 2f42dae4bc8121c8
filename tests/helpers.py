"""What several test modules share: the digits data, the digits model's contract, running the CLI."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIGIT_SIZE = 32
MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def digit_photos(count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """sklearn's 8x8 handwritten digits as 32x32 RGB uint8 photos (white ink tinted per digit)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images, labels = digits.images[:count], digits.target[:count]
    photos = []
    for image in images:
        gray = Image.fromarray((image / 16.0 * 255).astype(np.uint8)).resize((DIGIT_SIZE, DIGIT_SIZE), Image.BILINEAR)
        gray = np.asarray(gray, dtype=np.float32)
        rgb = np.stack([gray, gray * 0.8 + 20, 255 - gray * 0.9], axis=2)
        photos.append(np.clip(rgb, 0, 255).astype(np.uint8))
    return np.stack(photos), labels


def preprocess(photos: np.ndarray) -> np.ndarray:
    tensors = (photos.astype(np.float32) / 255.0 - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    return tensors.transpose(0, 3, 1, 2).copy()


DIGITS_CONTRACT = ["--input-shape", "1,3,32,32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
CLI = [sys.executable, "-m", "exporter.cli"]
# build_spec's flags as the CLI passes them when none is given.
NO_FLAGS = dict.fromkeys(
    ["model", "target", "out", "weights", "trust_pickle", "calib", "val", "labels", "int8_io", "pure_int8", "timeout_s",
     "input_shape", "mean", "std", "color", "pixel_scale", "rebuild"]
)


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`mobile-export export ARGS` from `cwd`, with this checkout first on the path."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([*CLI, "export", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=1200)


def substitute_tflite_converter(monkeypatch, replacement: list[str]) -> None:
    """Run `replacement` instead of the TFLite converter's child process (for an in-process export)."""
    import core.process as process

    real = process.run_contained

    def substituted(args, **kwargs):
        return real(replacement if "targets.tflite.convert" in args else args, **kwargs)

    monkeypatch.setattr(process, "run_contained", substituted)
