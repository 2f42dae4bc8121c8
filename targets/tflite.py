"""TFLite (LiteRT) target: onnx2tf for the graph, TensorFlow's converter for int8, LiteRT to run it.

onnx2tf turns the NCHW ONNX graph into an NHWC Keras model, which we convert to fp32 and fp16 .tflite files.
The int8 model is quantized by us from the fp32 graph (with int8-ready weights written into it), so
calibration uses exactly the user's preprocessed photos and a failed quantization is an error (onnx2tf only
logs a warning and carries on).

The conversion runs in a child process (`python -m targets.tflite REQUEST.json`): TensorFlow is large,
noisy, and not always well behaved, and a child can be timed out and its output kept in a log.
"""
from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

import numpy as np

from core.errors import ConverterError
from core.process import python_path_for_child, run_python_module
from targets.activation_ranges import clear_winner, describe_choice, shortlist
from core.artifact import VALIDATION_THREADS, Artifact, ConversionJob, run_in_chunks
from graph.passes.lean_graph import with_lean_graph
from targets.tflite_fallback import FallbackSteps, float_regions, keep_sensitive_tensors_float
from core.parity import ParityThresholds, compare, cosine_per_sample

# onnx2tf always loads this file for its own sanity inference on 4-D image inputs, and downloads it from
# the internet when it is missing from the current folder. We write one from the user's photos instead.
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
ONNX2TF_SAMPLE_SHAPE = (20, 128, 128)
CHILD_RESULT = "child_result.json"  # what the converter child reports back beyond the model files
FILE_FOR_PRECISION = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite", "int8": "model_int8.tflite"}


class TFLiteTarget:
    name = "tflite"
    runtime = "tflite"

    def convert(self, job: ConversionJob) -> list[Artifact]:
        job = with_lean_graph(job)  # channel shuffles as Gathers (no layout TRANSPOSEs), ReLU max pools 0-padded
        int8_onnx, preparation = _int8_ready_onnx(job)
        request = _write_request(job, int8_onnx)
        run_python_module(
            "targets.tflite", [str(request)], cwd=job.workdir, log_path=job.log_path, timeout_s=job.timeout_s,
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
        return [
            self._artifact(job.workdir, precision, {"int8_recipe": int8_recipe} if precision == "int8" else {})
            for precision in FILE_FOR_PRECISION
        ]

    def _artifact(self, workdir: Path, precision: str, extra_details: dict) -> Artifact:
        path = workdir / FILE_FOR_PRECISION[precision]
        if not path.is_file():
            raise ConverterError(
                f"the TFLite converter finished without writing the {precision} model",
                hint="see the tflite log in OUT/<model>/logs/ for the converter's own message",
            )
        details = {**describe_tflite(path), **extra_details}
        return Artifact(path=path, runtime=self.runtime, precision=precision, details=details)

    def load(self, artifact: Artifact) -> "LiteRTRunner":
        return LiteRTRunner(artifact.path)

    def tool_versions(self) -> dict[str, str]:
        return {name: metadata.version(name) for name in ("onnx2tf", "tensorflow", "ai-edge-litert")}


def _child_result(workdir: Path) -> dict:
    try:
        return json.loads((workdir / CHILD_RESULT).read_text())
    except (OSError, ValueError):
        return {}


def _fallback_record(child: dict):
    if "float_fallback" not in child:
        return "unknown"
    return child["float_fallback"] or "off (--pure-int8): every op stays integer"


def _int8_ready_onnx(job: ConversionJob) -> tuple[Path, dict]:
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


def describe_tflite(path: Path) -> dict:
    """Input/output dtypes and layout, and how many ops of each kind the graph holds."""
    interpreter = tensor_keeping_interpreter(path.read_bytes())  # no delegate: count the model's own ops
    operations: dict[str, int] = {}
    for op in interpreter._get_ops_details():
        operations[op["op_name"]] = operations.get(op["op_name"], 0) + 1
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return {
        "layout": "NHWC",
        "input": {"shape": tensor_in["shape"].tolist(), "dtype": np.dtype(tensor_in["dtype"]).name},
        "output": {"shape": tensor_out["shape"].tolist(), "dtype": np.dtype(tensor_out["dtype"]).name},
        "ops": dict(sorted(operations.items())),
    }


def _interpreter(path: Path, threads: int = VALIDATION_THREADS):
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ConverterError(f"LiteRT cannot load {path.name}: {error}", hint="the .tflite file is damaged") from None
    return interpreter


class LiteRTRunner:
    """Runs a .tflite on NCHW float batches: transposes to NHWC and (de)quantizes int8 I/O itself."""

    def __init__(self, path: Path, threads: int = VALIDATION_THREADS):
        self._interpreter = _interpreter(path, threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    def run(self, batch_nchw: np.ndarray) -> np.ndarray:
        return run_in_chunks(self._run_fixed_batch, batch_nchw, int(self._input["shape"][0]))

    def op_names(self) -> set[str]:
        """The kinds of node in the execution plan: "DELEGATE" when XNNPACK took (part of) the graph."""
        return {op["op_name"] for op in self._interpreter._get_ops_details()}  # the only way LiteRT tells

    def _run_fixed_batch(self, batch_nchw: np.ndarray) -> np.ndarray:
        tensor = batch_nchw
        if tensor.ndim == 4 and tuple(self._input["shape"][1:]) != tensor.shape[1:]:
            tensor = tensor.transpose(0, 2, 3, 1)
        self._interpreter.set_tensor(self._input["index"], quantize(tensor, self._input))
        self._interpreter.invoke()
        output = dequantize(self._interpreter.get_tensor(self._output["index"]), self._output)
        return output.transpose(0, 3, 1, 2) if output.ndim == 4 else output


def quantize(tensor: np.ndarray, details: dict) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return tensor.astype(dtype)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(tensor / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(tensor: np.ndarray, details: dict) -> np.ndarray:
    if np.dtype(details["dtype"]).kind == "f":
        return tensor.astype(np.float32)
    scale, zero_point = details["quantization"]
    return ((tensor.astype(np.float32) - zero_point) * scale).astype(np.float32)


# ---- the child process ----------------------------------------------------------------------------------


def _child_main(request_path: Path) -> None:
    request = json.loads(request_path.read_text())
    workdir = request_path.parent
    with _phase("onnx2tf and TFLite conversion (fp32 and fp16 models)"):
        float_models = _convert_with_onnx2tf(Path(request["onnx"]), workdir / "onnx2tf")
    for precision, model_bytes in float_models.items():
        (workdir / FILE_FOR_PRECISION[precision]).write_bytes(model_bytes)
    float_model, how = _float_model_for_int8(request, workdir)
    calibration = np.load(request["calibration"])
    gate = ParityThresholds(**request["int8_fallback_gate"]) if request.get("int8_fallback_gate") else None
    int8_model, ranges, fallback = _quantize_int8(float_model, calibration, request["int8_io"], gate)
    (workdir / FILE_FOR_PRECISION["int8"]).write_bytes(int8_model)
    (workdir / CHILD_RESULT).write_text(json.dumps(
        {"int8_float_graph": how, "activation_ranges": ranges, "float_fallback": fallback}))


def _float_model_for_int8(request: dict, workdir: Path) -> tuple[bytes, str]:
    """The float .tflite the int8 model is quantized from, and how it was made. The fp32 graph with the edited
    weights written into it when every edit can be located there; else onnx2tf run on the edited ONNX."""
    import onnx

    from targets.tflite_weights import substitute_edited_weights

    fp32_model = (workdir / FILE_FOR_PRECISION["fp32"]).read_bytes()
    if request["int8_onnx"] == request["onnx"]:
        return fp32_model, "the fp32 graph"
    with _phase("int8 weights written into the fp32 graph"):
        substituted = substitute_edited_weights(fp32_model, onnx.load(request["onnx"]), onnx.load(request["int8_onnx"]))
    if substituted is not None:
        return substituted, "the fp32 graph with the int8-ready weights written into it"
    _log("some edited weights are not found in the fp32 graph: converting the edited ONNX")
    with _phase("onnx2tf (int8 source)"):
        float_models = _convert_with_onnx2tf(Path(request["int8_onnx"]), workdir / "onnx2tf_int8")
    return float_models["fp32"], "onnx2tf on the int8-ready ONNX"


@contextmanager
def _phase(name: str):
    """Wall time of each step in the converter log: that is where a slow export is diagnosed."""
    started, cpu_started = time.perf_counter(), time.process_time()
    yield
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    _log(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU")


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


def _quantize_int8(float_model: bytes, calibration_nhwc: np.ndarray, int8_io: bool,
                   gate: ParityThresholds | None) -> tuple[bytes, dict, dict | None]:
    """Full-integer int8: per-channel weights, activation ranges fitted to the user's photos. Returns the
    model, how its activation ranges were chosen, and what the float fallback measured and kept in float
    (None without a gate).

    TensorFlow's own calibration takes each activation's min/max, which a few outlier pixels stretch: on
    torchvision's MobileNetV2 that costs a quarter of the top-1 agreement. We calibrate, quantize once per
    range method of `targets.activation_ranges`, correct each layer's bias for the mean shift rounding
    introduced (empirical bias correction, Nagel et al. 2019, "Data-Free Quantization"), and keep the model
    whose outputs agree best with the float model's on calibration photos bias correction did not measure,
    unless its lead over the preferred method is noise (`activation_ranges.clear_winner`).
    The choice is made on the finished models: on MobileNetV2, percentile ranges agreed best before bias
    correction (0.9954 vs mse 0.9948) and worst after it (validation top-1 0.92 vs 0.96).
    When the chosen model fails the gate on those photos, `targets.tflite_fallback` keeps the few most
    costly activation tensors in float.
    """
    from tensorflow.lite.python.optimize import calibrator

    with _phase("int8 calibration"):
        # The same two calls TFLiteConverter makes for a representative dataset, on the float .tflite.
        calibrated = calibrator.Calibrator(calibrator.add_intermediate_tensors(float_model)).calibrate(
            lambda: ([sample[None]] for sample in calibration_nhwc)
        )
    stride = max(1, len(calibration_nhwc) // SELECTION_SAMPLES)
    bias_samples, scoring_samples = calibration_nhwc[::stride], calibration_nhwc[stride // 2 :: stride]
    reference = _model_outputs(calibrated, scoring_samples)
    with _phase("int8 activation ranges (one quantization per method)"):
        tuned = _tuned_per_range_method(calibrated, calibration_nhwc)
        candidates = {method: _mlir_quantize(model, int8_io) for method, model in tuned.items()}
        before = {method: _agreement(reference, model, scoring_samples) for method, model in candidates.items()}
    shortlisted = shortlist(before)
    with _phase(f"int8 bias correction ({len(shortlisted)} of {len(candidates)} range methods)"):
        finished = {method: correct_biases(candidates[method], calibrated, bias_samples) for method in shortlisted}
        per_sample = {method: _per_sample_cosine(reference, model, scoring_samples)
                      for method, model in finished.items()}
    after = {method: round(float(cosines.mean()), 6) for method, cosines in per_sample.items()}
    best = clear_winner(per_sample)
    _log(f"int8 activation ranges: {best} (output cosine before bias correction {before}, after {after})")
    ranges = {"method": best, "cosine_before_bias_correction": before, "cosine_after_bias_correction": after,
              "scored_on": len(scoring_samples)}
    if gate is None:
        return finished[best], ranges, None
    steps = FallbackSteps(
        quantize=lambda float_ops: _mlir_quantize(tuned[best], int8_io, float_ops),
        finish=lambda model: correct_biases(model, calibrated, bias_samples),
        check=lambda model: compare(reference, _model_outputs(model, scoring_samples), gate),
    )
    with _phase("int8 gate on calibration photos (float fallback if it fails)"):
        model, fallback = keep_sensitive_tensors_float(finished[best], candidates[best],
                                                       float_regions(_model_object(tuned[best])), steps, progress=_log)
    return model, ranges, fallback


def _log(message: str) -> None:
    print(f"[mobile-export] {message}", flush=True)


def _model_object(model_bytes: bytes):
    from tensorflow.lite.tools import flatbuffer_utils

    return flatbuffer_utils.convert_bytearray_to_object(bytearray(model_bytes))


SELECTION_SAMPLES = 32  # calibration photos bias correction measures; as many others judge the range methods


def _tuned_per_range_method(calibrated: bytes, calibration_nhwc: np.ndarray) -> dict[str, bytes]:
    """The calibrated float model with each range method's activation ranges written in, ready to quantize."""
    from tensorflow.lite.tools import flatbuffer_utils

    from targets.activation_ranges import RANGE_METHODS, calibrated_ranges, collect_histograms, with_ranges

    model = _model_object(calibrated)
    interpreter = tensor_keeping_interpreter(calibrated)
    histograms = collect_histograms(interpreter, calibrated_ranges(model), calibration_nhwc,
                                    skip={interpreter.get_input_details()[0]["index"]})
    tuned = {}
    for method in RANGE_METHODS:
        with_ranges(model, histograms, method)
        tuned[method] = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    return tuned


def _agreement(reference: np.ndarray, model: bytes, samples_nhwc: np.ndarray) -> float:
    return round(float(_per_sample_cosine(reference, model, samples_nhwc).mean()), 6)


def _per_sample_cosine(reference: np.ndarray, model: bytes, samples_nhwc: np.ndarray) -> np.ndarray:
    return cosine_per_sample(reference, _model_outputs(model, samples_nhwc))


def _mlir_quantize(tuned: bytes, int8_io: bool, float_ops: tuple[str, ...] = ()) -> bytes:
    """int8 model of a range-tuned float model; `float_ops` (named by their first output tensor) stay float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert

    io_type = tf.int8 if int8_io else tf.float32
    return tflite_convert.mlir_quantize(
        tuned, disable_per_channel=False, input_data_type=io_type, output_data_type=io_type,
        denylisted_nodes=list(float_ops) or None,
    )


def _model_outputs(model_bytes: bytes, samples_nhwc: np.ndarray) -> np.ndarray:
    """The model's (dequantized) first output for every sample, one flattened row each."""
    interpreter = tensor_keeping_interpreter(model_bytes)
    (outputs,) = _tensor_values(interpreter, [interpreter.get_output_details()[0]["index"]], samples_nhwc)
    return outputs.reshape(len(samples_nhwc), -1)


# Range fitting and bias correction read float layer outputs, and their last bits depend on how the work is
# split over threads. Bias correction rounds those means into int32 biases layer after layer, so the split
# shows in the result: on the default MobileNetV2 (quantized from the previous converter route's fp32 graph),
# 1 thread gave int8 top-1 agreement 0.94 and 2 threads 0.98 (cosine 0.99555 vs 0.99554) on the same photos.
# Pinned, so an export does not depend on the machine.
CALIBRATION_THREADS = 2
BIAS_DTYPES = {2: np.int32, 4: np.int64}  # TFLite schema tensor types of int8 and int16x8 biases
WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# Where each fused activation is linear: the bias shift is measured only where the float output lies there.
LINEAR_REGION = {0: (-np.inf, np.inf), 1: (0.0, np.inf), 3: (0.0, 6.0)}  # NONE, RELU, RELU6


def correct_biases(quantized: bytes, float_model: bytes, samples_nhwc: np.ndarray) -> bytes:
    """Layer by layer, in graph order, shift each int32 bias so the int8 layer's mean output per channel
    matches the float layer's on the calibration photos. Sequential, because each fix changes what the
    next layer sees (correcting all layers from one measurement overshoots: top-1 agreement fell to 0.74).
    The biases are edited in place in the serialized model, which is far cheaper than re-serializing it
    for every layer."""
    from tensorflow.lite.python import schema_py_generated as schema

    structure = _model_object(quantized)
    quantized_ops = _weighted_ops(structure)
    float_outputs = _float_layer_outputs(float_model, samples_nhwc)
    if len(float_outputs) != len(quantized_ops):
        return quantized  # the graphs do not line up op for op: leave the model as TensorFlow made it
    model_bytes = bytearray(quantized)
    buffers = schema.Model.GetRootAsModel(model_bytes, 0)  # views into model_bytes: writes land in the model
    tensors = structure.subgraphs[0].tensors
    positions = [structure.subgraphs[0].operators.index(op) for op in quantized_ops]
    for layer, op in enumerate(quantized_ops):
        bias_index = op.inputs[2] if len(op.inputs) > 2 else -1
        bias_dtype = BIAS_DTYPES.get(tensors[bias_index].type) if bias_index >= 0 else None
        if bias_dtype is None:
            continue
        prefix = _graph_prefix(bytes(model_bytes), positions[layer])
        (quantized_out,) = _layer_outputs(prefix, [op.outputs[0]], samples_nhwc)
        shift = _mean_shift(float_outputs[layer], quantized_out, _linear_region(op))
        bias = buffers.Buffers(tensors[bias_index].buffer).DataAsNumpy().view(bias_dtype)
        scales = np.asarray(tensors[bias_index].quantization.scale, dtype=np.float64)
        if bias.shape != shift.shape:
            continue  # a bias stored outside the flatbuffer (models over 2 GB): not ours to edit
        bias += np.round(shift / scales).astype(bias_dtype)
    return bytes(model_bytes)


def _graph_prefix(model_bytes: bytes, last_op: int) -> bytes:
    """The model cut after operator `last_op`, whose output becomes the graph's. TFLite stores operators in
    execution order, so every input of the prefix is made inside it. Bias correction runs each layer's
    prefix instead of the whole network: on MobileNetV2 one correction took 36 s instead of 51 s, and the
    model it returned was byte for byte the same."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = _model_object(model_bytes)
    subgraph = model.subgraphs[0]
    subgraph.outputs = [subgraph.operators[last_op].outputs[0]]
    subgraph.operators = subgraph.operators[: last_op + 1]
    model.signatureDefs = []  # they name the full graph's output tensor
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _weighted_ops(model) -> list:
    from tensorflow.lite.python import schema_py_generated as schema

    wanted = {getattr(schema.BuiltinOperator, name) for name in WEIGHTED_OPS}
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    return [op for op in model.subgraphs[0].operators if codes[op.opcodeIndex] in wanted]


def _linear_region(op) -> tuple[float, float]:
    activation = getattr(op.builtinOptions, "fusedActivationFunction", 0) if op.builtinOptions is not None else 0
    return LINEAR_REGION.get(activation, (-np.inf, np.inf))


def _float_layer_outputs(float_model: bytes, samples_nhwc: np.ndarray) -> list[np.ndarray]:
    """Every weighted layer's float output for every sample (float16 to halve the memory)."""
    model = _model_object(float_model)
    indices = [op.outputs[0] for op in _weighted_ops(model)]
    return _layer_outputs(float_model, indices, samples_nhwc, np.float16)


def _layer_outputs(model_bytes: bytes, indices: list[int], samples_nhwc: np.ndarray,
                   dtype=np.float32) -> list[np.ndarray]:
    """The (dequantized) outputs of the tensors `indices` for every sample, one array per tensor."""
    return _tensor_values(tensor_keeping_interpreter(model_bytes), indices, samples_nhwc, dtype)


def _tensor_values(interpreter, indices: list[int], samples_nhwc: np.ndarray, dtype=np.float32) -> list[np.ndarray]:
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    collected = [[] for _ in indices]
    for sample in samples_nhwc:
        _invoke(interpreter, sample)
        for store, index in zip(collected, indices):
            store.append(dequantize(interpreter.get_tensor(index), details[index]).astype(dtype, copy=False))
    return [np.stack(store) for store in collected]


def tensor_keeping_interpreter(model_bytes: bytes):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=model_bytes, experimental_preserve_all_tensors=True, num_threads=CALIBRATION_THREADS,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    return interpreter


def _invoke(interpreter, sample_nhwc: np.ndarray) -> None:
    details = interpreter.get_input_details()[0]
    interpreter.set_tensor(details["index"], quantize(sample_nhwc[None], details))
    interpreter.invoke()


def _mean_shift(float_out: np.ndarray, quantized_out: np.ndarray, region: tuple[float, float]) -> np.ndarray:
    """Per output channel (last axis): mean of float - int8 where the float output is in the linear region."""
    float_out = float_out.astype(np.float32).reshape(-1, float_out.shape[-1])
    quantized_out = quantized_out.reshape(-1, quantized_out.shape[-1])
    mask = (float_out > region[0]) & (float_out < region[1])
    counts = mask.sum(axis=0)
    total = np.where(mask, float_out - quantized_out, 0.0).sum(axis=0)
    return np.where(counts > 0, total / np.maximum(counts, 1), 0.0)


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
