"""The TFLite conversion: onnx2tf for the graph, TensorFlow's converter for fp32/fp16, our int8 recipe.

onnx2tf turns the NCHW ONNX graph into an NHWC Keras model, which we convert to fp32 and fp16 .tflite files.
The int8 model is quantized by us from the fp32 graph (with int8-ready weights written into it), so
calibration uses exactly the user's preprocessed photos and a failed quantization is an error (onnx2tf only
logs a warning and carries on).

The conversion runs in a child process (`python -m targets.tflite.convert REQUEST.json`): TensorFlow is large,
noisy, and not always well behaved, and a child can be timed out and its output kept in a log.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core.artifact import Artifact, ConversionJob
from core.errors import ConverterError
from core.parity import ParityThresholds
from core.process import python_path_for_child, run_python_module
from graph.passes.lean_graph import with_lean_graph
from targets.tflite.activation_ranges import describe_choice
from targets.tflite.child_log import log, phase
from targets.tflite.runner import describe_tflite

# onnx2tf always loads this file for its own sanity inference on 4-D image inputs, and downloads it from
# the internet when it is missing from the current folder. We write one from the user's photos instead.
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


ONNX2TF_SAMPLE_SHAPE = (20, 128, 128)


CHILD_RESULT = "child_result.json"  # what the converter child reports back beyond the model files


FILE_FOR_PRECISION = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite", "int8": "model_int8.tflite"}


def convert(job: ConversionJob, runtime: str) -> list[Artifact]:
    job = with_lean_graph(job)  # channel shuffles as Gathers (no layout TRANSPOSEs), ReLU max pools 0-padded
    int8_onnx, preparation = int8_ready_onnx(job)
    request = _write_request(job, int8_onnx)
    run_python_module(
        "targets.tflite.convert", [str(request)], cwd=job.workdir, log_path=job.log_path, timeout_s=job.timeout_s,
        what="onnx2tf / TFLite conversion",
        # Keep TensorFlow from grabbing every core and from chattering on stderr.
        env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": python_path_for_child()},
    )
    child = _child_result(job.workdir)
    int8_recipe = {
        "activation_ranges": describe_choice(child.get("activation_ranges")),
        "weights": "per-channel symmetric int8, rounded to minimize each layer's output error (GPTQ)",
        **preparation,
        "bias_correction": "empirical, layer by layer",
        "io": "int8" if job.int8_io else "float32",
        "calibration_samples": int(len(job.calibration)),
        "float_graph": child.get("int8_float_graph", "unknown"),
        "float_fallback": _fallback_record(child),
    }
    return [_artifact(job.workdir, runtime, precision, {"int8_recipe": int8_recipe} if precision == "int8" else {})
            for precision in FILE_FOR_PRECISION]


def _artifact(workdir: Path, runtime: str, precision: str, extra_details: dict) -> Artifact:
    path = workdir / FILE_FOR_PRECISION[precision]
    if not path.is_file():
        raise ConverterError(
            f"the TFLite converter finished without writing the {precision} model",
            hint="see the tflite log in OUT/<model>/logs/ for the converter's own message",
        )
    details = {**describe_tflite(path), **extra_details}
    return Artifact(path=path, runtime=runtime, precision=precision, details=details)


def _child_result(workdir: Path) -> dict:
    try:
        return json.loads((workdir / CHILD_RESULT).read_text())
    except (OSError, ValueError):
        return {}


def _fallback_record(child: dict):
    if "float_fallback" not in child:
        return "unknown"
    return child["float_fallback"] or "off (--pure-int8): every op stays integer"


def int8_ready_onnx(job: ConversionJob) -> tuple[Path, dict]:
    """The ONNX graph the int8 model is quantized from: activation ranges equalized where that is exact
    enough, then every convolution's weights rounded onto the int8 grid with calibration-aware rounding."""
    import onnx

    from graph.passes.equalize import equalize_activation_ranges
    from graph.passes.weight_rounding import round_weights_to_int8_grid

    equalized, pairs = equalize_activation_ranges(onnx.load(str(job.onnx.path)), job.calibration)
    rounded, layers = round_weights_to_int8_grid(equalized, job.calibration)
    # A folder of its own: onnx2tf names its outputs after the input file and writes beside its output.
    folder = job.workdir / "int8_source"
    folder.mkdir()
    path = folder / "model.onnx"
    onnx.save(rounded, str(path))
    return path, {"equalized_layer_pairs": len(pairs), "grid_rounded_layers": len(layers)}


def _write_request(job: ConversionJob, int8_onnx: Path) -> Path:
    """Everything the child needs, as files in the private work folder."""
    calibration_nhwc = np.ascontiguousarray(job.calibration.transpose(0, 2, 3, 1), dtype=np.float32)
    np.save(job.workdir / "calibration_nhwc.npy", calibration_nhwc)
    np.save(job.workdir / ONNX2TF_SAMPLE_FILE, onnx2tf_sample_images(job.calibration, job.contract))
    request = {
        "onnx": str(job.onnx.path),
        "int8_onnx": str(int8_onnx),
        "calibration": str(job.workdir / "calibration_nhwc.npy"),
        "int8_io": job.int8_io,
        "int8_fallback_gate": None if job.int8_fallback_gate is None else asdict(job.int8_fallback_gate),
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
        float_models = _convert_with_onnx2tf(Path(request["onnx"]), workdir / "onnx2tf")
    for precision, model_bytes in float_models.items():
        (workdir / FILE_FOR_PRECISION[precision]).write_bytes(model_bytes)
    from targets.tflite.int8 import quantize_int8

    float_model, how = _float_model_for_int8(request, workdir)
    calibration = np.load(request["calibration"])
    gate = ParityThresholds(**request["int8_fallback_gate"]) if request.get("int8_fallback_gate") else None
    int8_model, ranges, fallback = quantize_int8(float_model, calibration, request["int8_io"], gate)
    (workdir / FILE_FOR_PRECISION["int8"]).write_bytes(int8_model)
    (workdir / CHILD_RESULT).write_text(json.dumps(
        {"int8_float_graph": how, "activation_ranges": ranges, "float_fallback": fallback}))


def _float_model_for_int8(request: dict, workdir: Path) -> tuple[bytes, str]:
    """The float .tflite the int8 model is quantized from, and how it was made. The fp32 graph with the edited
    weights written into it when every edit can be located there; else onnx2tf run on the edited ONNX."""
    import onnx

    from targets.tflite.weights import substitute_edited_weights

    fp32_model = (workdir / FILE_FOR_PRECISION["fp32"]).read_bytes()
    if request["int8_onnx"] == request["onnx"]:
        return fp32_model, "the fp32 graph"
    with phase("int8 weights written into the fp32 graph"):
        substituted = substitute_edited_weights(fp32_model, onnx.load(request["onnx"]), onnx.load(request["int8_onnx"]))
    if substituted is not None:
        return substituted, "the fp32 graph with the int8-ready weights written into it"
    log("some edited weights are not found in the fp32 graph: converting the edited ONNX")
    with phase("onnx2tf (int8 source)"):
        float_models = _convert_with_onnx2tf(Path(request["int8_onnx"]), workdir / "onnx2tf_int8")
    return float_models["fp32"], "onnx2tf on the int8-ready ONNX"


def _convert_with_onnx2tf(onnx_path: Path, scratch: Path) -> dict[str, bytes]:
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
