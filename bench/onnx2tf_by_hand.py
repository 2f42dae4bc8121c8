"""The "before" of the zoo matrix: int8 TFLite as onnx2tf makes it when run by hand, measured like ours.

    .venv/bin/python bench/onnx2tf_by_hand.py --out /tmp/zoo                  # every model OUT holds
    .venv/bin/python bench/onnx2tf_by_hand.py --out /tmp/zoo --models squeezenet1_1
    .venv/bin/python bench/zoo_matrix.py --out /tmp/zoo --exported-only --before /tmp/zoo/onnx2tf_by_hand.json

For each model `bench/zoo_matrix.py` exported into OUT, this takes the exported .onnx and the very
calibration and validation samples that export used (rebuilt from the same command line), and runs what a
user would run without mobile-export: `onnx2tf -i model.onnx -oiqt -cind input calibration.npy MEAN STD`,
with onnx2tf's defaults (its onnxsim pass, per-channel weights, TensorFlow's min/max calibration). Its
`*_integer_quant.tflite` (float input and output, like our default int8 artifact) is then checked against
the ONNX model on the validation samples with the same gate, and its TRANSPOSE/PAD ops counted. The rows
are written as OUT/onnx2tf_by_hand.json in the zoo matrix's format, for `bench/zoo_matrix.py --before`.

onnx2tf runs in a private temporary folder, with its sample file written there from the calibration
photos, so it neither writes into the current folder nor reaches for the internet.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.zoo_matrix import MatrixRow, count_ops, plan_runs, select_models  # noqa: E402

TABLE_NAME = "onnx2tf_by_hand"
ARTIFACT = "tflite int8"  # the zoo matrix row this one is the "before" of


@dataclass(frozen=True)
class ExportInputs:
    """What an export in OUT/<model> measured its artifacts with, rebuilt: its spec, calibration and
    validation samples, its ONNX model and that model's outputs on the validation samples."""
    manifest: dict
    spec: object  # exporter.config.ExportSpec
    datasets: object  # exporter.datasets.Datasets
    onnx_model: object  # core.artifact.OnnxModel
    reference: np.ndarray


def rebuild_export_inputs(model_dir: Path) -> ExportInputs:
    """For exports made with `--model` alone (zoo models, default flags), like the zoo matrix's."""
    from exporter.config import build_spec
    from exporter.datasets import DatasetPlan, build_datasets
    from exporter.onnx_stage import describe
    from targets.onnx import OnnxRuntimeRunner

    manifest = json.loads((model_dir / "manifest.json").read_text())
    spec = build_spec({"model": manifest["model"]["source"]})
    datasets = build_datasets(DatasetPlan(spec.calib, spec.val, calibration_samples=spec.calibration_samples),
                              spec.contract)
    onnx_model = describe(model_dir / f"{manifest['model']['name']}.onnx", spec.contract)
    return ExportInputs(manifest, spec, datasets, onnx_model, OnnxRuntimeRunner(onnx_model).run(datasets.validation))


def by_hand_row(model: str, weights_kind: str, model_dir: Path) -> MatrixRow:
    from core.parity import DEFAULT_THRESHOLDS, compare
    from targets.tflite import TFLiteTarget
    from targets.tflite.runner import LiteRTRunner, describe_tflite

    export = rebuild_export_inputs(model_dir)
    with tempfile.TemporaryDirectory(prefix="onnx2tf-by-hand-") as scratch:
        started = time.perf_counter()
        tflite_path = onnx2tf_int8(export.onnx_model, export.datasets.calibration, export.spec.contract,
                                    Path(scratch))
        seconds = time.perf_counter() - started
        candidate = LiteRTRunner(tflite_path).run(export.datasets.validation)
        ops = describe_tflite(tflite_path)["ops"]
        megabytes = tflite_path.stat().st_size / 1e6
    parity = compare(export.reference, candidate, DEFAULT_THRESHOLDS["int8"])
    return MatrixRow(
        model=model, weights=weights_kind, artifact=ARTIFACT, exit_code=0, cosine=parity.cosine,
        top1_agreement=parity.top1_agreement, passed=parity.passed, megabytes=round(megabytes, 3),
        convert_seconds=round(seconds, 1), export_seconds=round(seconds, 1),
        transposes=count_ops(ops, TFLiteTarget.layout_ops), pads=count_ops(ops, TFLiteTarget.pad_ops),
        failures="; ".join(parity.failures),
    )


def onnx2tf_int8(onnx_model, calibration_nchw: np.ndarray, contract, scratch: Path) -> Path:
    """onnx2tf's -oiqt with the calibration photos given as it asks: NHWC in [0, 1], with the mean and std."""
    import onnx2tf

    from targets.tflite.convert import ONNX2TF_SAMPLE_FILE, onnx2tf_sample_images

    mean = np.asarray(contract.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(contract.std, np.float32).reshape(1, -1, 1, 1)
    photos = (calibration_nchw * std + mean).transpose(0, 2, 3, 1).astype(np.float32)
    np.save(scratch / "calibration.npy", photos)
    np.save(scratch / ONNX2TF_SAMPLE_FILE, onnx2tf_sample_images(calibration_nchw, contract))
    with contextlib.chdir(scratch):
        onnx2tf.convert(
            input_onnx_file_path=str(onnx_model.path), output_folder_path=str(scratch / "out"),
            output_integer_quantized_tflite=True, non_verbose=True,
            custom_input_op_name_np_data_path=[[onnx_model.input_name, str(scratch / "calibration.npy"),
                                                mean.reshape(1, 1, 1, -1), std.reshape(1, 1, 1, -1)]],
        )
    # *_integer_quant.tflite keeps float input and output; *_full_integer_quant.tflite takes int8.
    (path,) = [p for p in (scratch / "out").glob("*_integer_quant.tflite") if "full_integer" not in p.name]
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/zoo"), help="the zoo matrix's output folder")
    parser.add_argument("--models", nargs="*", help="zoo names or shell patterns; default: every model OUT holds")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    table = out / f"{TABLE_NAME}.json"
    done = {row["model"]: row for row in json.loads(table.read_text())["rows"]} if table.is_file() else {}
    runs = [run for run in plan_runs(select_models(args.models), "android", out)
            if (run.model_dir / "manifest.json").is_file()]
    for run in runs:
        started = time.perf_counter()
        try:
            row = by_hand_row(run.model, run.weights_kind, run.model_dir)
        except Exception as error:  # onnx2tf failing on a model is a result of the comparison, not a crash
            row = MatrixRow(run.model, run.weights_kind, ARTIFACT, 1, None, None, False, None, None,
                            round(time.perf_counter() - started, 1), None, None, f"onnx2tf: {error}"[:300])
        done[run.model] = asdict(row)
        table.write_text(json.dumps({"rows": list(done.values())}, indent=2) + "\n")  # resumable, model by model
        print(f"{run.model}: onnx2tf by hand int8 cosine {row.cosine}, top-1 {row.top1_agreement}, "
              f"TRANSPOSE {row.transposes}, PAD {row.pads} {row.failures} ({time.perf_counter() - started:.0f} s)",
              file=sys.stderr, flush=True)
    print(f"table: {table}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
