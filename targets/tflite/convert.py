"""The TFLite conversion: onnx2tf for the graph, TensorFlow's converter for fp32/fp16, our int8 recipe.

onnx2tf turns the NCHW ONNX graph into an NHWC Keras model, which we convert to fp32 and fp16 .tflite files.
The int8 model is made by us from the fp32 file (targets/tflite/int8.py), so calibration uses exactly the
user's preprocessed photos, every decision is made in the deterministic simulator, and a failed quantization
is an error (onnx2tf only logs a warning and carries on).

The conversion runs in a child process (`python -m targets.tflite.convert REQUEST.json`): TensorFlow is large,
noisy, and not always well behaved, and a child can be timed out and its output kept in a log.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core.artifact import Artifact, ConversionJob, run_in_chunks
from core.errors import ConverterError
from core.output_kinds import inferred_kind
from core.parity import ParityThresholds
from core.process import child_result, python_path_for_child, run_python_module
from graph.passes.lean_graph import with_lean_graph
from targets.tflite.child_log import phase
from targets.tflite.outputs import MATCH_SAMPLES, match_outputs
from targets.tflite.runner import LiteRTRunner, describe_tflite

# onnx2tf always loads this file for its own sanity inference on 4-D image inputs, and downloads it from
# the internet when it is missing from the current folder. We write one from the user's photos instead.
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


ONNX2TF_SAMPLE_SHAPE = (20, 128, 128)


CHILD_RESULT = "child_result.json"  # what the converter child reports back beyond the model files
MATCHED_OUTPUTS = "matched_outputs.json"  # the child's match of the fp32 model's outputs to the ONNX ones


# Threads of the int8 recipe's simulator: they change how fast, never what (bench/reproducibility.py varies them).
INT8_THREADS_VARIABLE, DEFAULT_INT8_THREADS = "MOBILE_EXPORT_INT8_THREADS", "2"
FILE_FOR_PRECISION = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite", "int8": "model_int8.tflite"}


def convert(job: ConversionJob, runtime: str) -> list[Artifact]:
    job = with_lean_graph(job)  # channel shuffles as Gathers (no layout TRANSPOSEs), ReLU max pools 0-padded
    request = _write_request(job)
    run_python_module(
        "targets.tflite.convert", [str(request)], cwd=job.workdir, log_path=job.log_path, timeout_s=job.timeout_s,
        what="onnx2tf / TFLite conversion",
        # Keep TensorFlow from grabbing every core and from chattering on stderr.
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": python_path_for_child()},
    )
    child = child_result(job.workdir / CHILD_RESULT)
    int8_recipe = {
        **child,
        "io": "int8" if job.int8_io else "float32",
        "decided_by": "the deterministic simulator (targets/tflite/simulator.py): the same inputs give the same "
                      "bytes on any machine",
        "float_fallback": _fallback_record(child),
    }
    outputs = _matched_outputs(job)
    return [_artifact(job.workdir, runtime, precision,
                      {"outputs": outputs, **({"int8_recipe": int8_recipe} if precision == "int8" else {})})
            for precision in FILE_FOR_PRECISION]


def _matched_outputs(job: ConversionJob) -> list[dict]:
    """Each ONNX output's LiteRT output and layout (targets/tflite/outputs.py), found on the fp32 model: by the
    converter child, which needed it for the int8 recipe's gate, or here."""
    path = job.workdir / FILE_FOR_PRECISION["fp32"]
    if not path.is_file():
        raise ConverterError("the TFLite converter finished without writing the fp32 model",
                             hint="see the tflite log in OUT/<model>/logs/ for the converter's own message")
    if (job.workdir / MATCHED_OUTPUTS).is_file():
        return json.loads((job.workdir / MATCHED_OUTPUTS).read_text())
    return _match(path, job.onnx.path, list(job.onnx.output_names), job.calibration, job.onnx.input_shape[0])


def _match(fp32_path: Path, onnx_path: Path, names: list[str], calibration_nchw: np.ndarray, batch: int) -> list[dict]:
    samples = calibration_nchw[: batch * max(1, MATCH_SAMPLES // batch)]
    runner = LiteRTRunner(fp32_path)
    litert_outputs = run_in_chunks(lambda chunk: dict(enumerate(runner.raw_outputs(chunk))), samples, batch)
    return match_outputs(onnx_path, names, list(litert_outputs.values()), samples)


def _artifact(workdir: Path, runtime: str, precision: str, extra_details: dict) -> Artifact:
    path = workdir / FILE_FOR_PRECISION[precision]
    if not path.is_file():
        raise ConverterError(
            f"the TFLite converter finished without writing the {precision} model",
            hint="see the tflite log in OUT/<model>/logs/ for the converter's own message",
        )
    details = {**describe_tflite(path), **extra_details}
    return Artifact(path=path, runtime=runtime, precision=precision, details=details)


def _fallback_record(child: dict):
    if "float_fallback" not in child:
        return "unknown"
    return child["float_fallback"] or "off (--pure-int8): every op stays integer"


def _write_request(job: ConversionJob) -> Path:
    """Everything the child needs, as files in the private work folder."""
    calibration_nhwc = np.ascontiguousarray(job.calibration.transpose(0, 2, 3, 1), dtype=np.float32)
    np.save(job.workdir / "calibration_nhwc.npy", calibration_nhwc)
    np.save(job.workdir / ONNX2TF_SAMPLE_FILE, onnx2tf_sample_images(job.calibration, job.contract))
    request = {
        "onnx": str(job.onnx.path),
        "calibration": str(job.workdir / "calibration_nhwc.npy"),
        "int8_io": job.int8_io,
        "int8_fallback_gate": None if job.int8_fallback_gate is None else asdict(job.int8_fallback_gate),
        "batch": job.onnx.input_shape[0],
        "outputs": [{"name": output.name, "kind": job.output_kinds.get(output.name) or inferred_kind(output.shape)}
                    for output in job.onnx.outputs],
    }
    path = job.workdir / "request.json"
    path.write_text(json.dumps(request))
    return path


def onnx2tf_sample_images(calibration_nchw: np.ndarray, contract) -> np.ndarray:
    """20 of the user's photos as 128x128 NHWC in [0, 1], the form onnx2tf expects for its sample file."""
    from core.pixels import resize

    count, height, width = ONNX2TF_SAMPLE_SHAPE
    mean = np.asarray(contract.mean, np.float32)[:, None, None]
    std = np.asarray(contract.std, np.float32)[:, None, None]
    pixels = np.clip((calibration_nchw[:count] * std + mean) * 255.0, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    photos = [resize(np.ascontiguousarray(p), height, width) for p in pixels]
    photos = (photos * -(-count // len(photos)))[:count]
    return np.stack(photos).astype(np.float32) / 255.0


# ---- the child process ----------------------------------------------------------------------------------


def _child_main(request_path: Path) -> None:
    request = json.loads(request_path.read_text())
    workdir = request_path.parent
    with phase("onnx2tf and TFLite conversion (fp32 and fp16 models)"):
        float_models = convert_with_onnx2tf(Path(request["onnx"]), workdir / "onnx2tf")
    for precision, model_bytes in float_models.items():
        (workdir / FILE_FOR_PRECISION[precision]).write_bytes(model_bytes)
    from targets.tflite.int8 import quantize_int8

    calibration = np.load(request["calibration"])
    gate = ParityThresholds(**request["int8_fallback_gate"]) if request.get("int8_fallback_gate") else None
    threads = int(os.environ.get(INT8_THREADS_VARIABLE, DEFAULT_INT8_THREADS))
    judging = _output_judging(request, workdir / FILE_FOR_PRECISION["fp32"], calibration)
    int8_model, record = quantize_int8(float_models["fp32"], calibration, request["int8_io"], gate, threads=threads,
                                       judging=judging)
    (workdir / FILE_FOR_PRECISION["int8"]).write_bytes(int8_model)
    (workdir / CHILD_RESULT).write_text(json.dumps(record))


def _output_judging(request: dict, fp32_path: Path, calibration_nhwc: np.ndarray):
    """What each output of the fp32 model is (its ONNX name, kind and layout), for the int8 fallback's gate."""
    from targets.tflite.quantize import OutputJudging

    kinds = {output["name"]: output["kind"] for output in request["outputs"]}
    calibration_nchw = np.ascontiguousarray(calibration_nhwc.transpose(0, 3, 1, 2))
    matched = _match(fp32_path, Path(request["onnx"]), list(kinds), calibration_nchw, int(request["batch"]))
    (fp32_path.parent / MATCHED_OUTPUTS).write_text(json.dumps(matched))
    by_position = sorted(matched, key=lambda output: output["index"])
    return OutputJudging(tuple(o["name"] for o in by_position), tuple(kinds[o["name"]] for o in by_position),
                         tuple(o["layout"] for o in by_position))


def convert_with_onnx2tf(onnx_path: Path, scratch: Path) -> dict[str, bytes]:
    """The fp32 and fp16 .tflite of an ONNX graph. onnx2tf builds the NHWC Keras model; we convert its traced
    function ourselves, because onnx2tf's own route serializes the Keras model three times (a SavedModel, then
    once per precision), which took most of the export time. Builtin ops only: a model that would need
    TensorFlow's Flex ops does not run in a stock LiteRT app, so it must fail here, not on the phone."""
    import onnx2tf
    import tensorflow as tf

    keras_model = onnx2tf.convert(
        input_onnx_file_path=str(onnx_path),
        output_folder_path=str(scratch),
        disable_model_save=True,
        non_verbose=True,
        not_use_onnxsim=True,  # the graph was simplified and checked by the ONNX stage already
    )
    signature = [tf.TensorSpec(tensor.shape, tensor.dtype, tensor.name) for tensor in keras_model.inputs]
    traced = tf.function(lambda *inputs: keras_model(inputs), input_signature=signature).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([traced], keras_model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    models = {"fp32": converter.convert()}
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    models["fp16"] = converter.convert()
    return models


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
