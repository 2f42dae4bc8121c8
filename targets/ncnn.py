"""NCNN target: pnnx converts the ONNX graph to .param/.bin, the ncnn wheel runs them.

pnnx writes several side files (its own .pnnx.param, Python re-creations of the model); every path is
given explicitly so all of them land in the private work folder and only the ncnn pair is kept.
"""
from __future__ import annotations

import shutil
from importlib import metadata
from pathlib import Path

import numpy as np

from core.errors import ConverterError, InputError
from core.process import installed_executable, run_converter
from core.artifact import VALIDATION_THREADS, Artifact, ConversionJob
from graph.ncnn_param import Endpoints, endpoints, parse_ncnn_param

# fp16=1 stores weights as float16 in the .bin (half the size); arithmetic precision is a runtime option.
STORAGE_PRECISIONS = {"fp32": 0, "fp16": 1}


class NcnnTarget:
    name = "ncnn"
    runtime = "ncnn"

    def convert(self, job: ConversionJob) -> list[Artifact]:
        return [self._convert_one(job, precision, flag) for precision, flag in STORAGE_PRECISIONS.items()]

    def _convert_one(self, job: ConversionJob, precision: str, fp16_flag: int) -> Artifact:
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
            path=param, runtime=self.runtime, precision=precision, companions=(weights,),
            details={"layout": "CHW (no batch axis)", "input_blob": blobs.inputs[0], "output_blob": blobs.outputs[0],
                     "ops": blobs.layer_counts},
        )

    def load(self, artifact: Artifact) -> "NcnnRunner":
        return NcnnRunner(artifact.path, artifact.companions[0], artifact.precision)

    def tool_versions(self) -> dict[str, str]:
        return {"pnnx": metadata.version("pnnx"), "ncnn": metadata.version("ncnn")}


def _refuse_unknown_layers(blobs: Endpoints) -> None:
    """pnnx passes ops it cannot convert through under their own name; ncnn would refuse to load them."""
    import ncnn

    unknown = sorted(layer for layer in blobs.layer_counts if ncnn.layer_to_index(layer) < 0)
    if unknown:
        raise InputError(f"the model uses {', '.join(unknown)}, which ncnn cannot run",
                         hint="replace that op in the model, or build another --target (--keep-going builds the rest)")


def read_param(param: Path) -> Endpoints:
    """The blob the net is fed through, the blob it is read from, and its layer counts."""
    try:
        summary = endpoints(parse_ncnn_param(param))
    except (InputError, ValueError):
        raise ConverterError(f"{param.name} is not an ncnn param file", hint="re-run the export") from None
    if len(summary.inputs) != 1 or len(summary.outputs) != 1:
        raise ConverterError(
            f"{param.name} has {len(summary.inputs)} inputs and {len(summary.outputs)} outputs; expected one of each",
            hint="mobile-export handles image models with one input and one output",
        )
    return summary


class NcnnRunner:
    """Feeds ncnn one C x H x W sample at a time and restores the batch axis on the way out."""

    def __init__(self, param: Path, weights: Path, precision: str, threads: int = VALIDATION_THREADS):
        import ncnn

        self._net = ncnn.Net()
        options = self._net.opt
        options.num_threads = threads
        # An fp32 artifact must compute in fp32 here, whatever this host's CPU could shortcut; an fp16 artifact
        # runs as on an ARMv8.2 phone: fp16 storage and arithmetic.
        half = precision == "fp16"
        options.use_fp16_packed = half
        options.use_fp16_storage = half
        options.use_fp16_arithmetic = half
        options.use_bf16_storage = False
        options.use_vulkan_compute = False
        if self._net.load_param(str(param)) != 0 or self._net.load_model(str(weights)) != 0:
            raise ConverterError(f"ncnn cannot load {param.name} / {weights.name}", hint="the files are damaged; re-export")
        summary = read_param(param)
        self._input_blob, self._output_blob = summary.inputs[0], summary.outputs[0]

    @property
    def options(self):
        """The ncnn.Option the net runs with (threads, fp16 storage and arithmetic, ...)."""
        return self._net.opt

    def extractor(self):
        """A fresh ncnn extractor of the loaded net, for reading intermediate blobs."""
        return self._net.create_extractor()

    def run(self, batch_nchw: np.ndarray) -> np.ndarray:
        import ncnn

        outputs = []
        for sample in np.ascontiguousarray(batch_nchw, dtype=np.float32):
            extractor = self._net.create_extractor()
            extractor.input(self._input_blob, ncnn.Mat(np.ascontiguousarray(sample)).clone())
            status, result = extractor.extract(self._output_blob)
            if status != 0:
                raise ConverterError(f"ncnn failed to compute {self._output_blob} (code {status})", hint="re-export")
            outputs.append(np.array(result, dtype=np.float32))
        return np.stack(outputs)
