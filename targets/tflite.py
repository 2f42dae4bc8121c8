"""TFLite (LiteRT) target: onnx2tf for the graph, TensorFlow's converter for int8, LiteRT to run it.

onnx2tf turns the NCHW ONNX graph into an NHWC TensorFlow SavedModel plus fp32/fp16 .tflite files. We do
the int8 step ourselves from that SavedModel, so calibration uses exactly the user's preprocessed photos
and a failed quantization is an error (onnx2tf only logs a warning and carries on).

The conversion runs in a child process (`python -m targets.tflite REQUEST.json`): TensorFlow is large,
noisy, and not always well behaved, and a child can be timed out and its output kept in a log.
"""
from __future__ import annotations

import json
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from exporter.errors import ConverterError
from targets._process import run_python_module
from targets.base import Artifact, ConversionJob, run_in_chunks

# onnx2tf always loads this file for its own sanity inference on 4-D image inputs, and downloads it from
# the internet when it is missing from the current folder. We write one from the user's photos instead.
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
ONNX2TF_SAMPLE_SHAPE = (20, 128, 128)
FILE_FOR_PRECISION = {"fp32": "model_float32.tflite", "fp16": "model_float16.tflite", "int8": "model_int8.tflite"}


class TFLiteTarget:
    name = "tflite"
    runtime = "tflite"

    def convert(self, job: ConversionJob) -> list[Artifact]:
        request = _write_request(job)
        run_python_module(
            "targets.tflite", [str(request)], cwd=job.workdir, log_path=job.log_path, timeout_s=job.timeout_s,
            what="onnx2tf / TFLite conversion",
            # Keep TensorFlow from grabbing every core and from chattering on stderr.
            env={"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": _repo_root_for_child()},
        )
        return [self._artifact(job.workdir, precision) for precision in FILE_FOR_PRECISION]

    def _artifact(self, workdir: Path, precision: str) -> Artifact:
        path = workdir / FILE_FOR_PRECISION[precision]
        if not path.is_file():
            raise ConverterError(
                f"the TFLite converter finished without writing the {precision} model",
                hint="see the tflite log in OUT/<model>/logs/ for the converter's own message",
            )
        return Artifact(path=path, runtime=self.runtime, precision=precision, details=describe_tflite(path))

    def load(self, artifact: Artifact) -> "LiteRTRunner":
        return LiteRTRunner(artifact.path)

    def tool_versions(self) -> dict[str, str]:
        return {name: metadata.version(name) for name in ("onnx2tf", "tensorflow", "ai-edge-litert")}


def _repo_root_for_child() -> str:
    import os

    here = str(Path(__file__).resolve().parents[1])
    existing = os.environ.get("PYTHONPATH", "")
    return here + (os.pathsep + existing if existing else "")


def _write_request(job: ConversionJob) -> Path:
    """Everything the child needs, as files in the private work folder."""
    calibration_nhwc = np.ascontiguousarray(job.calibration.transpose(0, 2, 3, 1), dtype=np.float32)
    np.save(job.workdir / "calibration_nhwc.npy", calibration_nhwc)
    np.save(job.workdir / ONNX2TF_SAMPLE_FILE, _onnx2tf_sample_images(job))
    request = {
        "onnx": str(job.onnx.path),
        "calibration": str(job.workdir / "calibration_nhwc.npy"),
        "int8_io": job.int8_io,
    }
    path = job.workdir / "request.json"
    path.write_text(json.dumps(request))
    return path


def _onnx2tf_sample_images(job: ConversionJob) -> np.ndarray:
    """20 of the user's photos as 128x128 NHWC in [0, 1], the form onnx2tf expects for its sample file."""
    from exporter.images import resize

    count, height, width = ONNX2TF_SAMPLE_SHAPE
    mean = np.asarray(job.contract.mean, np.float32)[:, None, None]
    std = np.asarray(job.contract.std, np.float32)[:, None, None]
    pixels = np.clip((job.calibration[:count] * std + mean) * 255.0, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    photos = [resize(np.ascontiguousarray(p), height, width) for p in pixels]
    photos = (photos * -(-count // len(photos)))[:count]
    return np.stack(photos).astype(np.float32) / 255.0


def describe_tflite(path: Path) -> dict:
    """Input/output dtypes and layout, and how many ops of each kind the graph holds."""
    interpreter = _interpreter(path)
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


def _interpreter(path: Path, threads: int = 2):
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as error:
        raise ConverterError(f"LiteRT cannot load {path.name}: {error}", hint="the .tflite file is damaged") from None
    return interpreter


class LiteRTRunner:
    """Runs a .tflite on NCHW float batches: transposes to NHWC and (de)quantizes int8 I/O itself."""

    def __init__(self, path: Path, threads: int = 2):
        self._interpreter = _interpreter(path, threads)
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    def run(self, batch_nchw: np.ndarray) -> np.ndarray:
        return run_in_chunks(self._run_fixed_batch, batch_nchw, int(self._input["shape"][0]))

    def _run_fixed_batch(self, batch_nchw: np.ndarray) -> np.ndarray:
        tensor = batch_nchw
        if tensor.ndim == 4 and tuple(self._input["shape"][1:]) != tensor.shape[1:]:
            tensor = tensor.transpose(0, 2, 3, 1)
        self._interpreter.set_tensor(self._input["index"], _quantize(tensor, self._input))
        self._interpreter.invoke()
        output = _dequantize(self._interpreter.get_tensor(self._output["index"]), self._output)
        return output.transpose(0, 3, 1, 2) if output.ndim == 4 else output


def _quantize(tensor: np.ndarray, details: dict) -> np.ndarray:
    dtype = np.dtype(details["dtype"])
    if dtype.kind == "f":
        return tensor.astype(dtype)
    scale, zero_point = details["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(tensor / scale + zero_point), info.min, info.max).astype(dtype)


def _dequantize(tensor: np.ndarray, details: dict) -> np.ndarray:
    if np.dtype(details["dtype"]).kind == "f":
        return tensor.astype(np.float32)
    scale, zero_point = details["quantization"]
    return ((tensor.astype(np.float32) - zero_point) * scale).astype(np.float32)


# ---- the child process ----------------------------------------------------------------------------------


def _child_main(request_path: Path) -> None:
    request = json.loads(request_path.read_text())
    workdir = request_path.parent
    saved_model = workdir / "saved_model"
    _run_onnx2tf(Path(request["onnx"]), saved_model)
    for precision, produced in (("fp32", "model_float32.tflite"), ("fp16", "model_float16.tflite")):
        (saved_model / produced).replace(workdir / FILE_FOR_PRECISION[precision])
    calibration = np.load(request["calibration"])
    (workdir / FILE_FOR_PRECISION["int8"]).write_bytes(_quantize_int8(saved_model, calibration, request["int8_io"]))


def _run_onnx2tf(onnx_path: Path, saved_model: Path) -> None:
    import onnx2tf

    onnx2tf.convert(
        input_onnx_file_path=str(onnx_path),
        output_folder_path=str(saved_model),
        # Keep the ONNX tensor names on the TFLite inputs/outputs, so app code and the manifest agree.
        copy_onnx_input_output_names_to_tflite=True,
        output_signaturedefs=True,
        non_verbose=True,
    )


def _quantize_int8(saved_model: Path, calibration_nhwc: np.ndarray, int8_io: bool) -> bytes:
    """Full-integer int8: per-channel weights, activation ranges from the user's photos."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # Builtins only: a graph that cannot be fully int8 must fail here, not ship with float islands.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]

    def representative_dataset():
        for sample in calibration_nhwc:
            yield [tf.constant(sample[None])]

    converter.representative_dataset = representative_dataset
    if int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
