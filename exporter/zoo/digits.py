"""Weights for the zoo models without published ones: trained for a few minutes on real handwritten digits.

Only MobileNetV2's ImageNet weights ship here. A network with random weights has near-flat logits and
activations no photo ever produced: its int8 parity says nothing about a trained model's, and its int8 top-1
gate fails on near-ties. So `--model zoo:NAME` without `--weights` uses weights trained on scikit-learn's
handwritten digits (1,797 real 8x8 scans, 10 classes), upsampled to RGB photos of 96x96 (128x128 for
MobileNetV1, whose four resolutions of one width share one set of weights, as in the paper), and calibrates
and checks parity on those digits: the first TRAIN_COUNT train, the remaining 397 are held out and parity is
measured on them, never on a digit the model or the calibration saw.

Four small sets live in the package (`digits_weights/`); the others are trained on first use (one to nine
CPU minutes) and cached, so the repository stays small. `bench/zoo_training.py` trains ahead of time.
Weights are float16 safetensors (the exporter loads them into the float32 model; the PyTorch reference then
computes with exactly these values), with a JSON record of how each was trained.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from core.contract import InputContract
from core.manifest import write_atomically
from core.pixels import center_crop, resize
from exporter.zoo import IMAGENET_MEAN, IMAGENET_STD, ZOO

WEIGHTS_DIR = Path(__file__).resolve().parent / "digits_weights"
RECORD_NAME = "trained.json"
DATASET = "sklearn.datasets.load_digits"
CLASSES = 10
TRAIN_COUNT = 1400  # of 1,797 digits; the remaining 397 are held out for parity
CALIBRATION_COUNT = 200  # training digits the int8 export calibrates on
BATCH = 32
SEED = 0


@dataclass(frozen=True)
class TrainingPlan:
    steps: int
    input_size: int  # below the zoo's 224, where training would take several times longer
    learning_rate: float = 2e-3  # peak of the one-cycle schedule


# Sized to take one to nine minutes of one CPU core each (the measured seconds land in trained.json).
# One plan per set of weights: the MobileNetV1 resolution variants share their width's weights, trained at
# 128 (the smallest of the paper's resolutions) and exported at each variant's own resolution.
_SMALL, _LARGE = TrainingPlan(steps=400, input_size=96), TrainingPlan(steps=300, input_size=96)
# Without batch norm, a higher rate kills the ReLU after SqueezeNet's classifier conv: chance accuracy.
_NO_BATCH_NORM = TrainingPlan(steps=400, input_size=96, learning_rate=5e-4)
_MOBILENET_V1 = TrainingPlan(steps=500, input_size=128)
# At 96x96 ShuffleNetV1 g3's last stage runs on 3x3 maps with 3 groups, and onnx2tf then mistakes the layout
# of its grouped 1x1 convolutions ("Dimensions must be equal ... [1,3,3,76800]"); at 128 the maps are 4x4.
_GROUPS_OF_THREE = TrainingPlan(steps=400, input_size=128)
TRAINING_PLANS = {
    "shufflenet_v2_x0_5": _SMALL,
    "mobilenet_v3_small": _LARGE,
    "squeezenet1_1": _NO_BATCH_NORM,
    "mobilenet_v1_0_25_128": _MOBILENET_V1,
    "mobilenet_v1_0_5_128": _MOBILENET_V1,
    "mobilenet_v1_0_75_128": _MOBILENET_V1,
    "mobilenet_v1_1_0_128": _MOBILENET_V1,
    "mobilenet_v2": _LARGE,  # exports default to its ImageNet weights; these are for --weights on digits
    "mobilenet_v2_1_4": _LARGE,
    "mobilenet_v2_0_75": _LARGE,
    "mobilenet_v2_0_5": _SMALL,
    "mobilenet_v2_0_35": _SMALL,
    "mobilenet_v3_large": _LARGE,
    "shufflenet_v2_x1_0": _SMALL,
    "shufflenet_v2_x1_5": _LARGE,
    "shufflenet_v2_x2_0": _LARGE,
    "shufflenet_v1_g1": _SMALL,
    "shufflenet_v1_g2": _SMALL,
    "shufflenet_v1_g3": _GROUPS_OF_THREE,
    "shufflenet_v1_g4": _SMALL,
    "shufflenet_v1_g8": _SMALL,
    "squeezenet1_0": _NO_BATCH_NORM,
    "mnasnet1_0": _LARGE,
    "efficientnet_b0": _LARGE,
    "efficientnet_lite0": _LARGE,
}
# Small enough to live in the repository (5.8 MB together); the tests load them. The others are trained on
# first use into cache_dir(): together they would add about 100 MB to every clone.
STORED_IN_REPOSITORY = ("shufflenet_v2_x0_5", "mobilenet_v3_small", "squeezenet1_1", "mobilenet_v1_0_25_128")
LABELS = tuple(str(digit) for digit in range(CLASSES))


def cache_dir() -> Path:
    """Where weights trained on first use, and the digit photos, are kept ($MOBILE_EXPORT_CACHE moves it)."""
    return Path(os.environ.get("MOBILE_EXPORT_CACHE", Path.home() / ".cache" / "mobile-export")) / "zoo-weights"


def uses_digit_weights(name: str, weights: str | None) -> bool:
    """Whether zoo:`name` exported with `weights` falls back to the digit-trained weights: no weights given
    and none published for it."""
    return weights is None and name in ZOO and ZOO[name].pretrained_weights is None


def export_defaults(name: str) -> dict:
    """The input shape and the calibration / validation digits an export of zoo:`name` with its digit-trained
    weights defaults to (the photos are written to the cache once)."""
    size = export_size(name)
    data = write_parity_data(name, cache_dir() / "data")
    return {"input_shape": (1, 3, size, size), "calib": str(data.calibration), "val": str(data.validation)}


def weights_set(name: str) -> str:
    """The TRAINING_PLANS entry whose weights zoo:`name` uses."""
    if name in TRAINING_PLANS:
        return name
    if name.startswith("mobilenet_v1"):
        width = ZOO[name].build.keywords["alpha"]
        return f"mobilenet_v1_{str(float(width)).replace('.', '_')}_128"
    raise KeyError(f"no training plan for zoo:{name}")


def export_size(name: str) -> int:
    """The resolution zoo:`name` is exported and checked at: MobileNetV1 variants at their own."""
    return ZOO[name].input_size if name.startswith("mobilenet_v1") else TRAINING_PLANS[weights_set(name)].input_size


@dataclass(frozen=True)
class TrainingRecord:
    model: str
    dataset: str
    classes: int
    input_size: int
    steps: int
    batch: int
    seconds: float  # wall clock
    cpu_seconds: float  # this process's CPU time: what the training costs on a machine shared with others
    held_out_accuracy: float  # PyTorch float32, on the held-out digits
    weights_file: str
    weights_bytes: int


@dataclass(frozen=True)
class ParityData:
    calibration: Path  # N x H x W x 3 uint8 training digits
    validation: Path  # N x H x W x 3 uint8 held-out digits


def digit_photos(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Every scikit-learn digit as a size x size RGB uint8 photo (dark ink on white paper), with its label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    paper = (255 - digits.images / 16.0 * 255).astype(np.uint8)
    photos = np.stack([np.repeat(resize(scan, size, size)[:, :, None], 3, axis=2) for scan in paper])
    return photos, digits.target.astype(np.int64)


def contract_for(name: str) -> InputContract:
    """The exporter's default contract (ImageNet mean/std) at the training size: exports pass --input-shape."""
    size = TRAINING_PLANS[name].input_size
    return InputContract(input_shape=(1, 3, size, size), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def model_inputs(photos: np.ndarray, contract: InputContract) -> np.ndarray:
    """The tensors the exporter makes from these photos (.npy of uint8 photos: center crop, then contract)."""
    return np.stack([contract.preprocess(center_crop(photo, contract.height, contract.width)) for photo in photos])


def write_parity_data(name: str, folder: Path) -> ParityData:
    """Calibration (training digits) and validation (held-out digits) photos for `--calib` / `--val`."""
    size = export_size(name)
    folder.mkdir(parents=True, exist_ok=True)
    data = ParityData(folder / f"digits_{size}_calibration.npy", folder / f"digits_{size}_held_out.npy")
    if not (data.calibration.is_file() and data.validation.is_file()):
        photos, _ = digit_photos(size)
        write_atomically(data.calibration, lambda path: np.save(path, photos[:CALIBRATION_COUNT]))
        write_atomically(data.validation, lambda path: np.save(path, photos[TRAIN_COUNT:]))
    return data


def weights_dir_for(name: str) -> Path:
    return WEIGHTS_DIR if weights_set(name) in STORED_IN_REPOSITORY else cache_dir()


def trained_weights(name: str, weights_dir: Path | None = None) -> Path:
    name = weights_set(name)
    return (weights_dir or weights_dir_for(name)) / f"{name}_digits.safetensors"


def train(name: str, plan: TrainingPlan, seed: int = SEED, report_every: int = 0):
    """Train zoo:`name` with a 10-class head; returns (eval-mode model, wall seconds, CPU seconds, held-out
    accuracy). With `report_every`, prints the step and loss that often (training takes minutes)."""
    import torch

    torch.manual_seed(seed)
    contract = contract_for(name)
    photos, labels = digit_photos(contract.height)
    inputs = torch.from_numpy(model_inputs(photos, contract))
    targets = torch.from_numpy(labels)
    model = ZOO[name].build(num_classes=CLASSES)

    def loss_of(batch, generator):
        return torch.nn.functional.cross_entropy(model(_jitter(inputs[batch], generator)), targets[batch])

    started, cpu_started = time.perf_counter(), time.process_time()
    fit(model, loss_of, TRAIN_COUNT, plan.steps, BATCH, plan.learning_rate, seed, report_every)
    recalibrate_batch_norm(model, inputs[:TRAIN_COUNT])
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in inputs[TRAIN_COUNT:].split(64)])
    accuracy = float((predicted == targets[TRAIN_COUNT:]).float().mean())
    return model, seconds, cpu_seconds, accuracy


def fit(model, loss_of, sample_count: int, steps: int, batch: int, learning_rate: float, seed: int,
        report_every: int = 0, label: str = "") -> None:
    """AdamW with a one-cycle schedule on random batches of sample positions: `loss_of(positions, generator)`
    gives the batch's loss (the generator, after it drew the batch, is there for augmentation). With
    `report_every`, prints the step and loss that often, after `label`."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        positions = torch.randint(0, sample_count, (batch,), generator=generator)
        loss = loss_of(positions, generator)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        if report_every and step % report_every == 0:
            print(f"  {label}step {step}/{steps}, loss {loss.item():.3f}, {time.perf_counter() - started:.0f} s",
                  file=sys.stderr, flush=True)


def recalibrate_batch_norm(model, inputs, batch: int = 100) -> None:
    """Batch-norm statistics as the plain average over the training digits. MobileNetV3's momentum of 0.01
    (torchvision's) leaves the running statistics near their initial values after a few hundred steps, and
    the eval-mode model then guesses at chance."""
    import torch

    norms = [module for module in model.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for chunk in inputs.split(batch):
            model(chunk)
    for norm, momentum in zip(norms, momenta):
        norm.momentum = momentum


def _jitter(batch, generator):
    """Shift each digit by up to an eighth of the image: handwriting is never centered the same way twice."""
    import torch

    limit = batch.shape[-1] // 8
    shifts = torch.randint(-limit, limit + 1, (2,), generator=generator).tolist()
    return torch.roll(batch, shifts=shifts, dims=(2, 3))


def save_half_precision(model, path: Path) -> int:
    from safetensors.torch import save_file

    state = {
        key: (value.half() if value.is_floating_point() else value).contiguous()
        for key, value in model.state_dict().items()
    }
    write_atomically(path, lambda temporary: save_file(state, str(temporary)))
    return path.stat().st_size


def train_and_save(name: str, weights_dir: Path | None = None, report_every: int = 0) -> TrainingRecord:
    plan = TRAINING_PLANS[name]
    model, seconds, cpu_seconds, accuracy = train(name, plan, report_every=report_every)
    path = trained_weights(name, weights_dir)
    size = save_half_precision(model, path)
    return TrainingRecord(name, DATASET, CLASSES, plan.input_size, plan.steps, BATCH, round(seconds, 1),
                          round(cpu_seconds, 1), round(accuracy, 4), path.name, size)


def read_records(*weights_dirs: Path) -> dict[str, dict]:
    """How each set of weights was trained, from the trained.json files of `weights_dirs` (default: the
    repository's and the cache's)."""
    records = {}
    for folder in weights_dirs or (cache_dir(), WEIGHTS_DIR):
        path = folder / RECORD_NAME
        records.update(json.loads(path.read_text()) if path.is_file() else {})
    return records


def record_training(record, weights_dir: Path) -> None:
    """Add `record` (a dataclass with a `model` field: TrainingRecord, or the task models' record) to the
    trained.json of `weights_dir`."""
    records = read_records(weights_dir)
    records[record.model] = asdict(record)
    write_atomically(weights_dir / RECORD_NAME,
                     lambda temporary: temporary.write_text(json.dumps(records, indent=2) + "\n"))


def ensure_trained(name: str) -> Path:
    """The weights of zoo:`name`, trained now (one to nine CPU minutes) when neither the package nor the cache
    has them."""
    path = trained_weights(name)
    if not path.is_file():
        plan = TRAINING_PLANS[weights_set(name)]
        print(f"  training {weights_set(name)} on handwritten digits first ({plan.steps} steps at "
              f"{plan.input_size}x{plan.input_size}, once; cached in {path.parent})", file=sys.stderr, flush=True)
        record = train_and_save(weights_set(name), report_every=50)
        record_training(record, path.parent)
        print(f"  trained in {record.seconds:.0f} s, held-out accuracy {record.held_out_accuracy:.3f}",
              file=sys.stderr, flush=True)
    return path
