"""Zoo models trained for a minute or two on real handwritten digits, so int8 parity runs on trained activations.

A network with random weights has near-flat logits and activations no photo ever produced; its int8
parity says little about a trained model's. Here a few zoo families (a ShuffleNet, a MobileNetV3 with
squeeze-and-excitation and hard-swish, a SqueezeNet with fire modules, a MobileNetV1) are trained on
scikit-learn's handwritten digits (1,797 real 8x8 scans, 10 classes), upsampled to RGB photos of 96x96
(128x128 for the MobileNetV1 made for 128; 224 would cost five times the CPU of a two-minute budget), with the
classifier head resized to the 10 digits. The first TRAIN_COUNT digits train;
the rest are held out: parity is measured on them, never on a digit the model or the calibration saw.

    .venv/bin/python bench/zoo_training.py                 # train every planned model, write bench/zoo_weights/
    .venv/bin/python bench/zoo_training.py --models squeezenet1_1

Weights are stored as float16 safetensors (the exporter loads them into the float32 model; the PyTorch
reference then computes with exactly these values), with a JSON record of how each was trained.
bench/zoo_matrix.py --trained exports them with --calib / --val pointing at the digit photos.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.contract import InputContract  # noqa: E402
from exporter.images import center_crop, resize  # noqa: E402
from exporter.zoo import IMAGENET_MEAN, IMAGENET_STD, ZOO  # noqa: E402

WEIGHTS_DIR = Path(__file__).resolve().parent / "zoo_weights"
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
    input_size: int  # below the zoo's 224 where training there would take far more than two minutes
    learning_rate: float = 2e-3  # peak of the one-cycle schedule


# Sized to take one to two minutes of one CPU core each (the measured seconds land in trained.json).
TRAINING_PLANS = {
    "shufflenet_v2_x0_5": TrainingPlan(steps=400, input_size=96),
    "mobilenet_v3_small": TrainingPlan(steps=300, input_size=96),
    # Without batch norm, a higher rate kills the ReLU after SqueezeNet's classifier conv: chance accuracy.
    "squeezenet1_1": TrainingPlan(steps=400, input_size=96, learning_rate=5e-4),
    "mobilenet_v1_0_25_128": TrainingPlan(steps=500, input_size=128),
}


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
    size = TRAINING_PLANS[name].input_size
    folder.mkdir(parents=True, exist_ok=True)
    data = ParityData(folder / f"digits_{size}_calibration.npy", folder / f"digits_{size}_held_out.npy")
    if not (data.calibration.is_file() and data.validation.is_file()):
        photos, _ = digit_photos(size)
        np.save(data.calibration, photos[:CALIBRATION_COUNT])
        np.save(data.validation, photos[TRAIN_COUNT:])
    return data


def trained_weights(name: str, weights_dir: Path = WEIGHTS_DIR) -> Path:
    return weights_dir / f"{name}_digits.safetensors"


def train(name: str, plan: TrainingPlan, seed: int = SEED):
    """Train zoo:`name` with a 10-class head; returns (eval-mode model, wall seconds, CPU seconds, held-out
    accuracy)."""
    import torch

    torch.manual_seed(seed)
    contract = contract_for(name)
    photos, labels = digit_photos(contract.height)
    inputs = torch.from_numpy(model_inputs(photos, contract))
    targets = torch.from_numpy(labels)
    model = ZOO[name].build(num_classes=CLASSES)
    optimizer = torch.optim.AdamW(model.parameters(), lr=plan.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=plan.learning_rate, total_steps=plan.steps)
    generator = torch.Generator().manual_seed(seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    model.train()
    for _ in range(plan.steps):
        batch = torch.randint(0, TRAIN_COUNT, (BATCH,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(_jitter(inputs[batch], generator)), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    _recalibrate_batch_norm(model, inputs[:TRAIN_COUNT])
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    model.eval()
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(1) for chunk in inputs[TRAIN_COUNT:].split(64)])
    accuracy = float((predicted == targets[TRAIN_COUNT:]).float().mean())
    return model, seconds, cpu_seconds, accuracy


def _recalibrate_batch_norm(model, inputs, batch: int = 100) -> None:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path.stat().st_size


def train_and_save(name: str, weights_dir: Path = WEIGHTS_DIR) -> TrainingRecord:
    plan = TRAINING_PLANS[name]
    model, seconds, cpu_seconds, accuracy = train(name, plan)
    path = trained_weights(name, weights_dir)
    size = save_half_precision(model, path)
    return TrainingRecord(name, DATASET, CLASSES, plan.input_size, plan.steps, BATCH, round(seconds, 1),
                          round(cpu_seconds, 1), round(accuracy, 4), path.name, size)


def read_records(weights_dir: Path = WEIGHTS_DIR) -> dict[str, dict]:
    path = weights_dir / RECORD_NAME
    return json.loads(path.read_text()) if path.is_file() else {}


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(TRAINING_PLANS), choices=list(TRAINING_PLANS))
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR, help="folder for the weights and trained.json")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the machine is shared: one core, and CPU seconds are recorded
    records = read_records(args.out)
    for name in args.models:
        record = train_and_save(name, args.out)
        records[name] = asdict(record)
        print(f"{name:<24} {record.steps} steps in {record.seconds:6.1f} s ({record.cpu_seconds:.1f} s CPU), "
              f"held-out accuracy {record.held_out_accuracy:.3f}, {record.weights_bytes / 1e6:.2f} MB", flush=True)
        (args.out / RECORD_NAME).write_text(json.dumps(records, indent=2) + "\n")


if __name__ == "__main__":
    main()
