"""How much of an int8 artifact's error is left when activations stop being int8: the floor of int8 weights.

    .venv/bin/python bench/int8_floor.py out/mobilenet_v2             # weights-only floor, about a minute
    .venv/bin/python bench/int8_floor.py out/mobilenet_v2 --int16     # also int16 activations (16x8)

For a model `mobile-export export` wrote (zoo model or default flags), this rebuilds the export's calibration
and validation samples and its int8-ready ONNX graph (range equalization, then every convolution's weights
rounded onto TFLite's int8 grid), and measures on the validation samples, with the int8 gate:
  - weights only: that ONNX graph in ONNX Runtime, so every weight is int8 and every activation float;
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.onnx2tf_by_hand import ExportInputs, rebuild_export_inputs  # noqa: E402
from exporter.onnx_stage import describe  # noqa: E402
from targets.onnx import OnnxRuntimeRunner  # noqa: E402


def measure(model_dir: Path, with_int16: bool) -> list[tuple[str, dict]]:
    from core.parity import DEFAULT_THRESHOLDS, compare
    from targets.tflite.runner import LiteRTRunner

    export = rebuild_export_inputs(model_dir)
    validation, gate = export.datasets.validation, DEFAULT_THRESHOLDS["int8"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="int8-floor-") as scratch:
        job, int8_ready = _int8_ready_graph(export, Path(scratch))
        weights_only = OnnxRuntimeRunner(describe(int8_ready, export.spec.contract)).run(validation)
        rows.append(("int8 weights, float activations (ONNX Runtime)",
                     compare(export.reference, weights_only, gate).to_manifest()))
        if with_int16:
            int16 = LiteRTRunner(_int16_activations(model_dir, export.manifest, job, int8_ready)).run(validation)
            rows.append(("int8 weights, int16 activations (LiteRT 16x8)",
                         compare(export.reference, int16, gate).to_manifest()))
    artifact = _tflite_entry(export.manifest, "int8")
    rows.append((f"exported {Path(artifact['path']).name} (manifest)", artifact["parity"]))
    return rows


def _tflite_entry(manifest: dict, precision: str) -> dict:
    (entry,) = [a for a in manifest["artifacts"] if a["runtime"] == "tflite" and a["precision"] == precision]
    return entry


def _int8_ready_graph(export: ExportInputs, scratch: Path):
    """The ConversionJob the TFLite target sees, and the int8-ready ONNX it quantizes from."""
    from core.artifact import ConversionJob
    from graph.passes.lean_graph import with_lean_graph
    from targets.tflite.convert import int8_ready_onnx

    job = with_lean_graph(ConversionJob(onnx=export.onnx_model, contract=export.spec.contract,
                                        calibration=export.datasets.calibration, workdir=scratch,
                                        log_path=scratch / "log.txt"))
    path, _ = int8_ready_onnx(job)
    return job, path


def _int16_activations(model_dir: Path, manifest: dict, job, int8_ready: Path) -> Path:
    """The export's fp32 .tflite with the int8-ready weights written in, quantized with int16 activations."""
    import numpy as np
    import onnx
    import tensorflow as tf
    from tensorflow.lite.python.optimize import calibrator

    from targets.tflite.weights import substitute_edited_weights

    fp32 = _tflite_entry(manifest, "fp32")
    float_model = substitute_edited_weights((model_dir / fp32["path"]).read_bytes(), onnx.load(str(job.onnx.path)),
                                            onnx.load(str(int8_ready)))
    if float_model is None:
        raise SystemExit("the int8-ready weights are not all found in the exported fp32 .tflite")
    samples = np.ascontiguousarray(job.calibration.transpose(0, 2, 3, 1), dtype=np.float32)
    model = calibrator.Calibrator(float_model).calibrate_and_quantize(
        lambda: ([sample[None]] for sample in samples), tf.float32, tf.float32, False,
        activations_type=tf.int16, bias_type=tf.int64,
    )
    path = job.workdir / "int16_activations.tflite"
    path.write_bytes(model)
    return path


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
