"""bench/heldout_photos.py: the labelled ImageNet photos it scores on, and how it counts."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import heldout_photos  # noqa: E402


def test_the_labelled_photos_are_imagenet_photos_our_mobilenet_v2_recognises():
    """The built-in ImageNet sample photos: the labels in the file names index the same 1000 classes, in the same order, as the zoo's ImageNet
    MobileNetV2 and its preprocessing: its center crops name the labelled class on most photos (torchvision's
    published top-1 for these weights is 0.719)."""
    import torch

    from exporter.config import build_spec
    from exporter.datasets import ten_crop_tensors
    from exporter.images import imagenet_label, imagenet_sample_photos
    from exporter.sources import load_model

    photos = imagenet_sample_photos()
    labels = [imagenet_label(photo) for photo in photos]
    assert len(photos) == 20 and all(0 <= label < 1000 for label in labels)
    assert [int(p.name.split("_")[1]) for p in photos] == list(range(20))
    crops = ten_crop_tensors(photos, build_spec({"model": "zoo:mobilenet_v2"}).contract)
    center_crops = crops[:: heldout_photos.CROPS_PER_PHOTO]
    model = load_model("zoo:mobilenet_v2").module.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(center_crops)).argmax(dim=1).numpy()
    assert (predicted == np.asarray(labels)).sum() >= 14


def test_a_row_counts_agreement_with_the_reference_and_with_the_labels():
    reference = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    candidate = np.array([[3.0, 1.0, 0.0], [0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [0.0, 1.0, 0.0]])
    labels = np.array([0, 2, 2, 0])
    row = heldout_photos._row("m_int8.tflite", "set", reference, candidate, labels)
    assert (row.crops, row.agreeing, row.reference_correct, row.artifact_correct) == (4, 2, 3, 3)
    assert row.cosine == pytest.approx(np.mean([1.0, 0.8, 1.0, 0.0]))
    table = heldout_photos.markdown_table([row])
    assert "| m_int8.tflite | set | 4 | " in table and "0.500 (2/4)" in table and "3/4" in table


def test_the_builtin_photos_hold_out_the_odd_numbered_imagenet_samples_and_never_calibrate_on_them():
    from exporter.images import BUILTIN_VALIDATION_PHOTOS, builtin_photos, imagenet_label, split_builtin

    photos = builtin_photos()
    calibration, validation = split_builtin(photos)
    calibration_names, validation_names = [p.name for p in calibration], [p.name for p in validation]
    assert not set(calibration_names) & set(validation_names)
    assert len(calibration) + len(validation) == len(photos)
    held_out_samples = [name for p, name in zip(validation, validation_names) if imagenet_label(p) is not None]
    calibrating_samples = [name for p, name in zip(calibration, calibration_names) if imagenet_label(p) is not None]
    assert [int(name.split("_")[1]) for name in held_out_samples] == list(range(1, 20, 2))
    assert [int(name.split("_")[1]) for name in calibrating_samples] == list(range(0, 20, 2))
    assert set(BUILTIN_VALIDATION_PHOTOS) <= set(validation_names)


def test_missing_imagenet_samples_say_how_to_install_them(monkeypatch):
    import importlib.util

    from core.errors import InputError
    from exporter.images import imagenet_sample_photos

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError) as error:
        imagenet_sample_photos()
    assert "make venv" in error.value.hint and "--calib" in error.value.hint
