"""How much of an int8 artifact's error is left when activations stop being int8: the floor of int8 weights.

    .venv/bin/python bench/int8_floor.py out/mobilenet_v2             # weights-only floor, about a minute
    .venv/bin/python bench/int8_floor.py out/mobilenet_v2 --int16     # also int16 activations (16x8)

For a model `mobile-export export` wrote (zoo model or default flags), this rebuilds the export's calibration
and validation samples and the int8 recipe's int8-ready float .tflite (the exported fp32 file with every
convolution's weights rounded onto TFLite's int8 grid: targets/tflite/int8.py, deterministic, so the same as the
export's), and measures on the validation samples, with the int8 gate:
  - weights only: that float .tflite in LiteRT, so every weight is int8 and every activation float;
  - with --int16: the same weights with int16 activations, TFLite's 16x8 mode, in LiteRT;
  - the exported int8 artifact, as its manifest recorded it.
Every top-1 change is listed with the reference's lead (its score of its own class minus its score of the
artifact's class): when the weights-only graph already flips the same near-tie samples, no activation
range, calibration or fallback choice can win them back; int8 weights themselves decide them.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.onnx2tf_by_hand import rebuild_export_inputs  # noqa: E402


def measure(model_dir: Path, with_int16: bool) -> list[tuple[str, dict]]:
    from core.parity import DEFAULT_THRESHOLDS, compare
    from targets.tflite.int8 import RecipeSteps, int8_ready
    from targets.tflite.runner import LiteRTRunner

    export = rebuild_export_inputs(model_dir)
    validation, gate = export.datasets.validation, DEFAULT_THRESHOLDS["int8"]
    calibration = np.ascontiguousarray(export.datasets.calibration.transpose(0, 2, 3, 1), dtype=np.float32)
    fp32 = (model_dir / _tflite_entry(export.manifest, "fp32")["path"]).read_bytes()
    ready, _ = int8_ready(fp32, calibration, RecipeSteps())
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-floor-") as scratch:
        path = Path(scratch) / "int8_ready.tflite"
        path.write_bytes(ready)
        rows.append(("int8 weights, float activations (LiteRT)",
                     compare(export.reference, LiteRTRunner(path).run(validation), gate).to_manifest()))
        if with_int16:
            path = Path(scratch) / "int16_activations.tflite"
            path.write_bytes(_int16_activations(ready, calibration))
            rows.append(("int8 weights, int16 activations (LiteRT 16x8)",
                         compare(export.reference, LiteRTRunner(path).run(validation), gate).to_manifest()))
    artifact = _tflite_entry(export.manifest, "int8")
    rows.append((f"exported {Path(artifact['path']).name} (manifest)", artifact["parity"]))
    return rows


def _tflite_entry(manifest: dict, precision: str) -> dict:
    (entry,) = [a for a in manifest["artifacts"] if a["runtime"] == "tflite" and a["precision"] == precision]
    return entry


def _int16_activations(float_model: bytes, samples_nhwc: np.ndarray) -> bytes:
    """The int8-ready float model quantized by TensorFlow with int16 activations (its own calibration)."""
    import tensorflow as tf
    from tensorflow.lite.python.optimize import calibrator

    return calibrator.Calibrator(float_model).calibrate_and_quantize(
        lambda: ([sample[None]] for sample in samples_nhwc), tf.float32, tf.float32, False,
        activations_type=tf.int16, bias_type=tf.int64,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="OUT/<model> of a mobile-export export")
    parser.add_argument("--int16", action="store_true", help="also measure int16 activations (TFLite 16x8)")
    args = parser.parse_args(argv)
    for name, parity in measure(args.model_dir, args.int16):
        top1 = parity.get("top1_agreement")
        print(f"{name:55s} cosine {parity['cosine']:.6f}  top-1 {'-' if top1 is None else f'{top1:.3f}'}")
        for change in parity.get("top1_changes", []):
            print(f"    sample {change['sample']:4d}: class {change['reference_class']} -> {change['artifact_class']}, "
                  f"reference lead {change['reference_lead']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
