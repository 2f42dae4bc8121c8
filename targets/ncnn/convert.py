"""pnnx converts the ONNX graph to ncnn .param/.bin pairs, fp32 and fp16 storage.

pnnx writes several side files (its own .pnnx.param, Python re-creations of the model); every path is
given explicitly so all of them land in the private work folder and only the ncnn pair is kept.
"""
from __future__ import annotations

import shutil

from core.artifact import Artifact, ConversionJob
from core.errors import ConverterError, InputError
from core.process import installed_executable, run_converter
from graph.ncnn_param import Endpoints
from targets.ncnn.runner import output_blobs, read_param

# fp16=1 stores weights as float16 in the .bin (half the size); arithmetic precision is a runtime option.
STORAGE_PRECISIONS = {"fp32": 0, "fp16": 1}


def convert(job: ConversionJob, runtime: str) -> list[Artifact]:
    return [_convert_one(job, runtime, precision, flag) for precision, flag in STORAGE_PRECISIONS.items()]


def _convert_one(job: ConversionJob, runtime: str, precision: str, fp16_flag: int) -> Artifact:
    folder = job.workdir / precision
    folder.mkdir()
    source = folder / "model.onnx"
    shutil.copyfile(job.onnx.path, source)
    param, weights = folder / "model.ncnn.param", folder / "model.ncnn.bin"
    shape = ",".join(str(d) for d in job.onnx.input_shape)
    side_files = {
        "pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py",
        "pnnxonnx": "model.pnnx.onnx", "ncnnpy": "model_ncnn.py",
    }
    run_converter(
        [installed_executable("pnnx"), str(source), f"inputshape=[{shape}]", f"fp16={fp16_flag}",
         f"ncnnparam={param}", f"ncnnbin={weights}", *(f"{key}={folder / name}" for key, name in side_files.items())],
        cwd=folder, log_path=job.log_path, timeout_s=job.timeout_s, what=f"pnnx ({precision})",
    )
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
