"""The int8 suite: our int8 recipe against onnx2tf by hand and ai-edge-quantizer, on real trained models it was not
tuned on, calibrated on 6 photos as users have them, judged on photos of other scenes.

Models: torchvision's ImageNet MobileNetV2 (the default), EfficientNet-Lite1 and -Lite2 (bench/suite_models.py).
Photos: the 20 labelled ImageNet validation photos of the foolbox wheel and the 10 everyday-object photos of
scikit-image / scikit-learn. Fold k calibrates on ImageNet photos 6k..6k+5 (120 views: random crops and mirrors,
as `--calib` with 6 photos makes them) and is judged on the ten crops of every other photo (240 samples), against
the ONNX model in ONNX Runtime, in LiteRT, as parity is.

Methods:
- ours: targets/tflite/int8.py on our fp32 .tflite (RecipeSteps variants for the ablation: --variants);
- onnx2tf: onnx2tf -oiqt on the same ONNX and calibration views (its defaults: min/max, per-channel);
- quantizer: ai-edge-quantizer 0.10 `static_wi8_ai8` on our fp32 .tflite with the same views, run by
  bench/aeq_int8.py in its own virtualenv (`make venv-quantizer`).

    .venv/bin/python bench/int8_suite.py [--models ...] [--folds 0 1 2] [--variants default ...] [--competitors ...]

Writes bench/results/int8_suite.json (every row) and prints the table. Resumable: rows already in --out are kept.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.contract import InputContract  # noqa: E402
from core.parity import compare, wilson_interval  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CALIBRATION_PHOTOS = 6
CALIBRATION_SAMPLES = 120
DEFAULT_OUT = REPO / "bench" / "results" / "int8_suite.json"
QUANTIZER_PYTHON = REPO / ".venv-quantizer" / "bin" / "python"


@dataclass(frozen=True)
class SuiteModel:
    name: str
    source: str  # a --model source
    size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


SUITE = {
    "mobilenet_v2": SuiteModel("mobilenet_v2", "zoo:mobilenet_v2", 224, IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet_lite1": SuiteModel("efficientnet_lite1", "python:bench.suite_models:efficientnet_lite1", 240,
                                     (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "efficientnet_lite2": SuiteModel("efficientnet_lite2", "python:bench.suite_models:efficientnet_lite2", 260,
                                     (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# Recipe variants: the default, and steps taken out or forced one at a time (does each earn its place?).
VARIANTS = {
    "default": {},
    "mse-no-bias": {"bias_correction": "never"},
    "mse-bias": {"bias_correction": "always"},
    "percentile-bias": {"range_methods": ("percentile",), "bias_correction": "always"},
    "minmax-bias": {"range_methods": ("minmax",), "bias_correction": "always"},
    "mse-bias-no-rounding": {"bias_correction": "always", "round_weights": False},
    "plain": {"round_weights": False, "bias_correction": "never", "range_methods": ("minmax",)},
}


@dataclass(frozen=True)
class Row:
    model: str
    fold: int
    method: str  # "ours:default", "onnx2tf", "quantizer"
    cosine: float
    top1_agreement: float
    top1_low: float
    top1_high: float
    float_labels: int | None  # held-out ImageNet crops whose label the float model names
    int8_labels: int | None
    samples: int
    seconds: float
    record: dict | None = None


@dataclass(frozen=True)
class Prepared:
    model: SuiteModel
    contract: InputContract
    onnx_path: Path
    fp32_tflite: Path
    photos: list  # exporter.images.Photo: the 20 ImageNet photos, then the 10 object photos


def prepare(model: SuiteModel, folder: Path) -> Prepared:
    """The model's ONNX (simplified, as the export makes it) and fp32 .tflite (our converter's), cached in folder."""
    from exporter.images import BUILTIN_OBJECT_PHOTOS, builtin_photos, imagenet_sample_photos

    contract = InputContract((1, 3, model.size, model.size), model.mean, model.std)
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path, fp32 = folder / "model.onnx", folder / "model_fp32.tflite"
    if not onnx_path.is_file():
        _export_onnx(model, contract, onnx_path)
    if not fp32.is_file():
        _convert_fp32(onnx_path, fp32, folder)
    objects = [p for p in builtin_photos() if p.name in BUILTIN_OBJECT_PHOTOS]
    return Prepared(model, contract, onnx_path, fp32, imagenet_sample_photos() + objects)


def _export_onnx(model: SuiteModel, contract: InputContract, path: Path) -> None:
    from exporter import onnx_stage
    from exporter.sources import load_model

    loaded = load_model(model.source, None, False)
    onnx_stage.export_from_torch(loaded.module, contract, path, path.with_suffix(".log"))
    onnx_stage.simplify_and_check(path, path.with_suffix(".log"))


def _convert_fp32(onnx_path: Path, out: Path, folder: Path) -> None:
    from targets.tflite.convert import ONNX2TF_SAMPLE_FILE

    scratch = folder / "onnx2tf"
    scratch.mkdir(exist_ok=True)
    np.save(scratch / ONNX2TF_SAMPLE_FILE, np.random.default_rng(0).uniform(0, 1, (20, 128, 128, 3)).astype(np.float32))
    from targets.tflite.convert import convert_with_onnx2tf

    with contextlib.chdir(scratch):
        out.write_bytes(convert_with_onnx2tf(onnx_path, scratch)["fp32"])


def fold_data(prepared: Prepared, fold: int):
    """(calibration N x C x H x W, held-out samples, held-out ImageNet labels or -1)."""
    from core.pixels import ten_crop
    from exporter.images import imagenet_label, photo_views

    imagenet = prepared.photos[:20]
    chosen = imagenet[CALIBRATION_PHOTOS * fold: CALIBRATION_PHOTOS * (fold + 1)]
    held_out = [p for p in prepared.photos if p not in chosen]
    contract = prepared.contract
    views = photo_views(chosen, contract.height, contract.width, CALIBRATION_SAMPLES // CALIBRATION_PHOTOS, seed=fold)
    calibration = np.stack([contract.preprocess(v) for v in views])
    samples, labels = [], []
    for photo in held_out:
        label = imagenet_label(photo)
        for crop in ten_crop(photo.pixels, contract.height, contract.width):
            samples.append(contract.preprocess(crop))
            labels.append(-1 if label is None else label)
    return calibration, np.stack(samples), np.array(labels)


def judge(method: str, model_name: str, fold: int, int8_path: Path, reference: np.ndarray, samples: np.ndarray,
          labels: np.ndarray, seconds: float, record=None) -> Row:
    from core.parity import DEFAULT_THRESHOLDS
    from targets.tflite.runner import LiteRTRunner

    outputs = LiteRTRunner(int8_path).run(samples).reshape(reference.shape)
    parity = compare(reference, outputs, DEFAULT_THRESHOLDS["int8"])
    agreeing = round(parity.top1_agreement * parity.samples)
    low, high = wilson_interval(agreeing, parity.samples)
    labelled = labels >= 0
    return Row(model_name, fold, method, round(parity.cosine, 6), round(parity.top1_agreement, 4), round(low, 4),
               round(high, 4), int((reference.argmax(1)[labelled] == labels[labelled]).sum()),
               int((outputs.argmax(1)[labelled] == labels[labelled]).sum()), parity.samples, round(seconds, 1), record)


def run_ours(prepared: Prepared, calibration: np.ndarray, variant: str, out: Path) -> tuple[float, dict]:
    from targets.tflite.int8 import RecipeSteps, quantize_int8

    steps = replace(RecipeSteps(), **VARIANTS[variant])
    started = time.perf_counter()
    model, record = quantize_int8(prepared.fp32_tflite.read_bytes(), calibration.transpose(0, 2, 3, 1).copy(),
                                  False, None, steps)
    seconds = time.perf_counter() - started
    out.write_bytes(model)
    return seconds, record


def run_onnx2tf(prepared: Prepared, calibration: np.ndarray, out: Path) -> float:
    from bench.onnx2tf_by_hand import onnx2tf_int8
    from exporter.onnx_stage import describe

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="int8-suite-onnx2tf-") as scratch:
        path = onnx2tf_int8(describe(prepared.onnx_path, prepared.contract), calibration, prepared.contract,
                            Path(scratch))
        out.write_bytes(path.read_bytes())
    return time.perf_counter() - started


def run_quantizer(prepared: Prepared, calibration: np.ndarray, out: Path, python: Path) -> float:
    if not python.is_file():
        raise SystemExit(f"{python} is missing: run `make venv-quantizer` (ai-edge-quantizer needs its own venv)")
    with tempfile.TemporaryDirectory(prefix="int8-suite-aeq-") as scratch:
        samples = Path(scratch) / "calibration.npy"
        np.save(samples, calibration.transpose(0, 2, 3, 1).astype(np.float32))
        started = time.perf_counter()
        subprocess.run([str(python), str(REPO / "bench" / "aeq_int8.py"), str(prepared.fp32_tflite), str(samples),
                        str(out)], check=True, capture_output=True)
        return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(SUITE), choices=list(SUITE))
    parser.add_argument("--folds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="*", default=["default"], choices=list(VARIANTS))
    parser.add_argument("--competitors", nargs="*", default=["onnx2tf", "quantizer"], choices=["onnx2tf", "quantizer"])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "int8_suite")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quantizer-python", type=Path, default=QUANTIZER_PYTHON)
    args = parser.parse_args(argv)
    rows = {_key(row): row for row in _load(args.out)}
    for name in args.models:
        prepared = prepare(SUITE[name], args.work / name)
        from targets.onnx import OnnxRuntimeRunner
        from exporter.onnx_stage import describe

        reference_runner = OnnxRuntimeRunner(describe(prepared.onnx_path, prepared.contract))
        for fold in args.folds:
            calibration, samples, labels = fold_data(prepared, fold)
            reference = reference_runner.run(samples).reshape(len(samples), -1)
            methods = [f"ours:{variant}" for variant in args.variants] + list(args.competitors)
            for method in methods:
                if (name, fold, method) in rows:
                    continue
                path = args.work / name / f"fold{fold}_{method.replace(':', '_')}.tflite"
                record = None
                if method.startswith("ours:"):
                    seconds, record = run_ours(prepared, calibration, method.split(":", 1)[1], path)
                elif method == "onnx2tf":
                    seconds = run_onnx2tf(prepared, calibration, path)
                else:
                    seconds = run_quantizer(prepared, calibration, path, args.quantizer_python)
                row = judge(method, name, fold, path, reference, samples, labels, seconds, record)
                rows[_key(row)] = asdict(row)
                _save(args.out, list(rows.values()))
                print(_line(row), flush=True)
    print("\n".join(table(list(rows.values()))))
    return 0


def _key(row) -> tuple:
    row = row if isinstance(row, dict) else asdict(row)
    return row["model"], row["fold"], row["method"]


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["rows"] if path.is_file() else []


def _save(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")


def _line(row: Row) -> str:
    return (f"{row.model} fold {row.fold} {row.method}: cosine {row.cosine:.6f}, top-1 {row.top1_agreement:.3f} "
            f"({row.top1_low:.3f}-{row.top1_high:.3f}), labels {row.float_labels} -> {row.int8_labels}, {row.seconds} s")


def table(rows: list[dict]) -> list[str]:
    lines = ["| model | fold | method | cosine | top-1 (95 % interval) | labels float -> int8 | seconds |",
             "|---|---|---|---|---|---|---|"]
    for row in sorted(rows, key=lambda r: (r["model"], r["fold"], r["method"])):
        lines.append(f"| {row['model']} | {row['fold']} | {row['method']} | {row['cosine']:.6f} | "
                     f"{row['top1_agreement']:.3f} ({row['top1_low']:.3f}-{row['top1_high']:.3f}) | "
                     f"{row['float_labels']} -> {row['int8_labels']} | {row['seconds']} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
