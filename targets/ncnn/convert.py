"""pnnx converts the ONNX graph to ncnn .param/.bin pairs, fp32 and fp16 storage.

pnnx writes several side files (its own .pnnx.param, Python re-creations of the model); every path is
given explicitly so all of them land in the private work folder and only the ncnn pair is kept.
"""
from __future__ import annotations

import shutil

from core.artifact import Artifact, ConversionJob
from core.errors import ConverterError, InputError
from core.process import ConverterCall, installed_executable, run_converters_side_by_side
from graph.ncnn_param import Endpoints
from targets.ncnn.runner import output_blobs, read_param

# fp16=1 stores weights as float16 in the .bin (half the size); arithmetic precision is a runtime option.
STORAGE_PRECISIONS = {"fp32": 0, "fp16": 1}
PARAM_NAME, WEIGHTS_NAME = "model.ncnn.param", "model.ncnn.bin"


def convert(job: ConversionJob, runtime: str) -> list[Artifact]:
    """Both precisions' pnnx runs side by side (each is mostly pnnx starting up: 1.7 s of the 3.4 s two took one
    after the other on the digits model)."""
    calls = {precision: _pnnx_call(job, precision, flag) for precision, flag in STORAGE_PRECISIONS.items()}
    run_converters_side_by_side(list(calls.values()), log_path=job.log_path, timeout_s=job.timeout_s)
    return [_artifact(job, runtime, precision, call.cwd) for precision, call in calls.items()]


def _pnnx_call(job: ConversionJob, precision: str, fp16_flag: int) -> ConverterCall:
    folder = job.workdir / precision
    folder.mkdir()
    source = folder / "model.onnx"
    shutil.copyfile(job.onnx.path, source)
    param, weights = folder / PARAM_NAME, folder / WEIGHTS_NAME
    shape = ",".join(str(d) for d in job.onnx.input_shape)
    side_files = {
        "pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py",
        "pnnxonnx": "model.pnnx.onnx", "ncnnpy": "model_ncnn.py",
    }
    return ConverterCall(
        [installed_executable("pnnx"), str(source), f"inputshape=[{shape}]", f"fp16={fp16_flag}",
         f"ncnnparam={param}", f"ncnnbin={weights}", *(f"{key}={folder / name}" for key, name in side_files.items())],
        cwd=folder, what=f"pnnx ({precision})",
    )


def _artifact(job: ConversionJob, runtime: str, precision: str, folder) -> Artifact:
    param, weights = folder / PARAM_NAME, folder / WEIGHTS_NAME
    if not param.is_file() or not weights.is_file():
        raise ConverterError(
            f"pnnx finished without writing the ncnn {precision} model",
            hint="the graph likely uses an op ncnn does not support; see the ncnn log in OUT/<model>/logs/",
        )
    blobs = read_param(param)
    _refuse_unknown_layers(blobs)
    return Artifact(
        path=param, runtime=runtime, precision=precision, companions=(weights,),
        details={"layout": "CHW (no batch axis)", "input_blob": blobs.inputs[0],
                 "output_blobs": output_blobs(blobs, job.onnx.output_names), "ops": blobs.layer_counts},
    )


def _refuse_unknown_layers(blobs: Endpoints) -> None:
    """pnnx passes ops it cannot convert through under their own name; ncnn would refuse to load them."""
    import ncnn

    unknown = sorted(layer for layer in blobs.layer_counts if ncnn.layer_to_index(layer) < 0)
    if unknown:
        raise InputError(f"the model uses {', '.join(unknown)}, which ncnn cannot run",
                         hint="replace that op in the model, or build another --target (--keep-going builds the rest)")
