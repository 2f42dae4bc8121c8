"""Calibration and validation tensors, both made by the one input contract."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.contract import InputContract
from core.errors import InputError
from core.pixels import ten_crop
from exporter.images import BUILTIN_PHOTOS, Photo, load_photos, photo_views, split_builtin, split_holdout

# What the manifest's data.validation_source says when parity ran on photos held out of --calib.
HELD_OUT_SOURCE = "held-out part of the calibration set"

@dataclass(frozen=True)
class DatasetPlan:
    calibration_source: str  # folder, .npy, or "builtin"
    validation_source: str | None  # None: hold out part of the calibration photos
    calibration_samples: int = 120  # augmented crops fill up to this many when photos are few
    seed: int = 0


@dataclass(frozen=True)
class Datasets:
    calibration: np.ndarray  # N x C x H x W float32
    validation: np.ndarray
    description: dict  # for the manifest: where each came from, how many


def build_datasets(plan: DatasetPlan, contract: InputContract) -> Datasets:
    calibration_npy = _load_npy_if_given(plan.calibration_source, contract)
    validation_npy = _load_npy_if_given(plan.validation_source, contract) if plan.validation_source else None
    if calibration_npy is not None:
        calibration, held_out = _split_tensors(calibration_npy) if validation_npy is None else (calibration_npy, None)
        validation = validation_npy if validation_npy is not None else held_out
        return Datasets(calibration, validation, _describe(plan, len(calibration), len(validation), held_out is not None))

    photos = load_photos(plan.calibration_source)
    if plan.validation_source is None:
        split = split_builtin if str(plan.calibration_source) == BUILTIN_PHOTOS else split_holdout
        calibration_photos, validation_photos = split(photos)
    else:
        calibration_photos = photos
        validation_photos = None if validation_npy is not None else load_photos(plan.validation_source)
    views_per_photo = max(1, -(-plan.calibration_samples // len(calibration_photos)))
    calibration = _tensors(calibration_photos, contract, views_per_photo, plan.seed)
    validation = validation_npy if validation_npy is not None else ten_crop_tensors(validation_photos, contract)
    description = _describe(plan, len(calibration), len(validation), plan.validation_source is None)
    description["calibration_photos"] = [p.name for p in calibration_photos]
    if validation_photos is not None:
        description["validation_photos"] = [p.name for p in validation_photos]
    return Datasets(calibration, validation, description)


def _tensors(photos: list[Photo], contract: InputContract, views_per_photo: int, seed: int) -> np.ndarray:
    views = photo_views(photos, contract.height, contract.width, views_per_photo, seed)
    return np.stack([contract.preprocess(view) for view in views])


def ten_crop_tensors(photos: list[Photo], contract: InputContract) -> np.ndarray:
    """Validation views follow the standard ImageNet ten-crop protocol: deterministic, no random crops."""
    views = [view for photo in photos for view in ten_crop(photo.pixels, contract.height, contract.width)]
    return np.stack([contract.preprocess(view) for view in views])


def validation_tensors(source: str, contract: InputContract) -> np.ndarray:
    """The samples of a --val source on its own: a .npy as it is, or the ten crops of each photo in a folder."""
    array = _load_npy_if_given(source, contract)
    return array if array is not None else ten_crop_tensors(load_photos(source), contract)


def _split_tensors(tensors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(tensors) < 2:
        raise InputError(
            "the calibration .npy holds fewer than 2 samples: none can be held out to check parity",
            hint="give more samples, or pass a separate --val",
        )
    held_out = np.arange(len(tensors)) % 4 == 3
    if not held_out.any():
        held_out[-1] = True
    return tensors[~held_out], tensors[held_out]


def _load_npy_if_given(source: str | None, contract: InputContract) -> np.ndarray | None:
    if source is None or not str(source).endswith(".npy"):
        return None
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path} does not exist", hint="pass an existing .npy file or a folder of photos")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:  # EOFError: an empty or truncated file
        raise InputError(f"cannot read {path}: {error}", hint="save it with numpy.save, without pickled objects") from None
    return _npy_to_tensors(array, path, contract)


def _npy_to_tensors(array: np.ndarray, path: Path, contract: InputContract) -> np.ndarray:
    expected = (contract.channels, contract.height, contract.width)
    if array.dtype == np.uint8 and array.ndim == 4 and array.shape[-1] == 3:
        from core.pixels import center_crop

        views = [center_crop(image, contract.height, contract.width) for image in array]
        return np.stack([contract.preprocess(view) for view in views])
    if array.dtype in (np.float32, np.float64) and array.ndim == 4 and tuple(array.shape[1:]) == expected:
        if not np.isfinite(array).all():
            raise InputError(f"{path} contains NaN or Inf values", hint="clean the calibration tensors")
        return array.astype(np.float32)
    raise InputError(
        f"{path} has shape {array.shape} and dtype {array.dtype}, which is neither raw images nor model inputs",
        hint=f"save either N x H x W x 3 uint8 RGB photos, or N x {expected[0]} x {expected[1]} x {expected[2]} "
        "float32 tensors already preprocessed with the model's mean/std",
    )


def _describe(plan: DatasetPlan, calibration_count: int, validation_count: int, held_out: bool) -> dict:
    return {
        "calibration_source": str(plan.calibration_source),
        "calibration_samples": calibration_count,
        "validation_source": HELD_OUT_SOURCE if held_out else str(plan.validation_source),
        "validation_samples": validation_count,
    }


def explain_samples(data: dict, contract: InputContract, calib: str | None, val: str | None) -> np.ndarray:
    """The samples explain compares on: those of `val`, else the export's own validation tensors, rebuilt from
    the sources its manifest names (`data`; `calib` stands for the export's calibration photos when they moved,
    which hold the validation photos when parity ran on a held-out part of them)."""
    if val:
        if not Path(val).exists():
            raise InputError(f"the photos {val} are not there", hint="pass --val with a folder of photos or a .npy")
        return validation_tensors(val, contract)
    calibration_source = calib or data["calibration_source"]
    held_out = data["validation_source"] == HELD_OUT_SOURCE
    export_validation = None if held_out else data["validation_source"]
    for source in (calibration_source, export_validation):
        if source not in (None, BUILTIN_PHOTOS) and not Path(source).exists():
            raise InputError(
                f"the photos {source} are not there (relative paths are taken from the folder explain runs in, "
                "and the export's from the folder it ran in)",
                hint="run explain from that folder, or pass --calib (and --val) with the same photos",
            )
    return build_datasets(DatasetPlan(calibration_source, export_validation), contract).validation
