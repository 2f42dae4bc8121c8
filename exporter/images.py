"""Real photos for calibration and parity: loading, resizing to the contract, held-out splits."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.pixels import center_crop, random_crop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
BUILTIN_PHOTOS = "builtin"


@dataclass(frozen=True)
class Photo:
    name: str
    pixels: np.ndarray  # H x W x 3 uint8, RGB


def load_photos(source: str | Path) -> list[Photo]:
    """Photos from a folder of image files, or the built-in sample photos for `builtin`."""
    if str(source) == BUILTIN_PHOTOS:
        return builtin_photos()
    folder = Path(source)
    if not folder.exists():
        raise InputError(f"image folder {folder} does not exist", hint="pass a folder of PNG/JPEG photos")
    if not folder.is_dir():
        raise InputError(
            f"{folder} is not a folder of images",
            hint="pass a folder of PNG/JPEG photos, or a .npy file of images",
        )
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    image_files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not image_files:
        raise InputError(
            f"image folder {folder} contains no images ({len(files)} other files)",
            hint=f"put real photos ({', '.join(IMAGE_SUFFIXES)}) in it, taken like the ones the app will see",
        )
    return [_read_image_file(p) for p in image_files]


def _read_image_file(path: Path) -> Photo:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return Photo(path.name, np.asarray(image.convert("RGB"), dtype=np.uint8))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise InputError(
            f"cannot read image {path}: {error}", hint="remove or replace the file; it is not a readable image"
        ) from None


def builtin_photos() -> list[Photo]:
    """Real photographs that ship inside installed packages (no download needed): scikit-image's and
    scikit-learn's samples, then the labelled ImageNet validation photos inside the foolbox wheel."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    color = ["astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina"]
    gray = ["camera", "clock", "coins", "brick", "grass", "gravel", "moon", "cell"]
    photos = [Photo(name, getattr(skimage.data, name)()) for name in color]
    photos += [Photo(name, np.repeat(getattr(skimage.data, name)()[:, :, None], 3, axis=2)) for name in gray]
    left, right, _ = skimage.data.stereo_motorcycle()
    photos += [Photo("motorcycle_left", left), Photo("motorcycle_right", right)]
    samples = load_sample_images()
    photos += [Photo(Path(f).name, img) for f, img in zip(samples.filenames, samples.images)]
    return photos + imagenet_sample_photos()


def imagenet_sample_photos() -> list[Photo]:
    """foolbox's 20 ImageNet validation photos, imagenet_<index>_<class>.jpg, in index order.

    The foolbox wheel is installed with --no-deps for these files only and never imported: its own
    dependencies are not installed, so its folder is found without running it."""
    import importlib.util

    spec = importlib.util.find_spec("foolbox")
    locations = list(spec.submodule_search_locations or []) if spec else []
    files = sorted((Path(locations[0]) / "data").glob("imagenet_*.jpg")) if locations else []
    if not files:
        raise InputError(
            "the built-in ImageNet sample photos are not installed",
            hint="run `make venv` (it installs foolbox==3.3.4 with --no-deps for its photos), or pass --calib",
        )
    return [_read_image_file(path) for path in files]


def imagenet_label(photo: Photo) -> int | None:
    """The ImageNet class in an imagenet_<index>_<class>.jpg sample's name; None for any other photo."""
    numbers = _imagenet_sample_numbers(photo)
    return numbers[1] if numbers else None


def _imagenet_sample_numbers(photo: Photo) -> tuple[int, int] | None:
    parts = Path(photo.name).stem.split("_")
    if len(parts) == 3 and parts[0] == "imagenet" and parts[1].isdigit() and parts[2].isdigit():
        return int(parts[1]), int(parts[2])
    return None


# The built-in set mixes photos of things ImageNet has classes for with textures and scientific images
# (grass, gravel, microscopy, astronomy) on which an ImageNet classifier's ranking is close to a tie and
# means nothing. All of them calibrate. Parity is checked on every other object photo, in name order, and
# on every other ImageNet sample photo (the odd-numbered ones); those are never used to calibrate.
# The ImageNet samples are there because scikit-image's photos are too few and too unlike everyday photos to
# calibrate a photo model: calibrated on those alone, the default MobileNetV2's int8 agreed with float on 0.910
# of crops of the 20 ImageNet photos; with the even-numbered ones calibrating too, on 0.980 of the odd-numbered
# ones' crops (0.960 the other way round; bench/results/heldout_photos_mobilenet_v2.md).
BUILTIN_OBJECT_PHOTOS = ("astronaut", "camera", "chelsea", "china.jpg", "clock", "coffee", "flower.jpg",
                         "motorcycle_left", "motorcycle_right", "rocket")
BUILTIN_VALIDATION_PHOTOS = BUILTIN_OBJECT_PHOTOS[1::2]


def split_builtin(photos: list[Photo]) -> tuple[list[Photo], list[Photo]]:
    held_out = [p for p in photos if _held_out_builtin(p)]
    return [p for p in photos if not _held_out_builtin(p)], held_out


def _held_out_builtin(photo: Photo) -> bool:
    numbers = _imagenet_sample_numbers(photo)
    return photo.name in BUILTIN_VALIDATION_PHOTOS if numbers is None else numbers[0] % 2 == 1


def split_holdout(photos: list[Photo], every: int = 4) -> tuple[list[Photo], list[Photo]]:
    """Every `every`-th photo is held out for validation, the rest calibrate; both sides non-empty."""
    if len(photos) < 2:
        raise InputError(
            f"only {len(photos)} calibration photo(s): none can be held out to check parity",
            hint="give at least 2 photos in --calib, or pass a separate --val folder",
        )
    held_out = photos[every - 1 :: every] or photos[-1:]
    held_names = {id(p) for p in held_out}
    return [p for p in photos if id(p) not in held_names], held_out


def photo_views(photos: list[Photo], height: int, width: int, views_per_photo: int, seed: int) -> list[np.ndarray]:
    """The center crop of every photo, plus views_per_photo - 1 random crops of each (deterministic)."""
    rng = np.random.default_rng(seed)
    views = []
    for photo in photos:
        views.append(center_crop(photo.pixels, height, width))
        views += [random_crop(photo.pixels, height, width, rng) for _ in range(views_per_photo - 1)]
    return views
