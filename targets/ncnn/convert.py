"""pnnx converts the ONNX graph to ncnn .param/.bin pairs, fp32 and fp16 storage; int8 is written from the fp32
pair (targets/ncnn/int8.py).

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
    artifacts = [_artifact(job, runtime, precision, call.cwd) for precision, call in calls.items()]
    return [*artifacts, *_int8_artifacts(job, runtime, artifacts[0])]


def _int8_artifacts(job: ConversionJob, runtime: str, fp32: Artifact) -> list[Artifact]:
    """The int8 pair, or none when its writer cannot place a layer's weights: the reason goes to the log and to
    the fp32 artifact's details (the manifest), and the fp32 and fp16 pairs still ship."""
    from targets.ncnn.fallback import gate_fallback
    from targets.ncnn.int8 import write_int8

    folder, scratch = job.workdir / "int8", job.workdir / "int8_fallback"
    folder.mkdir()
    fallback = None if job.int8_fallback_gate is None else gate_fallback(
        fp32.path, fp32.companions[0], fp32.details["output_blobs"], job.calibration, job.int8_fallback_gate,
        job.output_kinds, scratch)
    try:
        record = write_int8(fp32.path, fp32.companions[0], job.calibration, folder / PARAM_NAME, folder / WEIGHTS_NAME,
                            fallback)
    except ConverterError as error:
        with open(job.log_path, "a", encoding="utf-8") as log:
            log.write(f"ncnn int8 not built: {error} ({error.hint})\n")
        fp32.details["int8"] = f"not built: {error}"
        return []
    int8 = _artifact(job, runtime, "int8", folder)
    int8.details["int8_recipe"] = record.to_details()
    return [int8]


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
