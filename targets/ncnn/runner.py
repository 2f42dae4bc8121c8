"""Running ncnn .param/.bin pairs with the ncnn wheel, one C x H x W sample at a time."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from core.artifact import VALIDATION_THREADS, OutputsRunner
from core.errors import ConverterError, InputError
from graph.ncnn_param import Endpoints, endpoints, parse_ncnn_param


def read_param(param: Path) -> Endpoints:
    """The blob the net is fed through, the blobs it is read from, and its layer counts."""
    try:
        summary = endpoints(parse_ncnn_param(param))
    except (InputError, ValueError):
        raise ConverterError(f"{param.name} is not an ncnn param file", hint="re-run the export") from None
    if len(summary.inputs) != 1 or not summary.outputs:
        raise ConverterError(
            f"{param.name} has {len(summary.inputs)} inputs and {len(summary.outputs)} outputs",
            hint="mobile-export exports image models with one image input; re-export the model",
        )
    return summary


PNNX_OUTPUT = re.compile(r"out(\d+)")


def output_blobs(summary: Endpoints, output_names: tuple[str, ...]) -> dict[str, str]:
    """{ONNX output name: ncnn blob}. pnnx names the model's k-th output "out<k>"; a param file whose outputs
    are named otherwise is matched in the order its layers write them (parity then checks the values)."""
    numbered = sorted(summary.outputs, key=lambda blob: int(PNNX_OUTPUT.fullmatch(blob).group(1))
                      if PNNX_OUTPUT.fullmatch(blob) else len(summary.outputs))
    if len(numbered) != len(output_names):
        raise ConverterError(
            f"the ncnn model has {len(numbered)} outputs ({', '.join(numbered)}) and the ONNX model "
            f"{len(output_names)} ({', '.join(output_names)})",
            hint="pnnx dropped or merged an output; see the ncnn log in OUT/<model>/logs/",
        )
    return dict(zip(output_names, numbered))


def recorded_blobs(details: dict) -> dict[str, str]:
    """{output name: ncnn blob} as an artifact's details record it; exports before several outputs were supported
    recorded one "output_blob"."""
    return details.get("output_blobs") or {"output": details.get("output_blob", "out0")}


class NcnnRunner(OutputsRunner):
    """Feeds ncnn one C x H x W sample at a time and restores the batch axis on the way out."""

    def __init__(self, param: Path, weights: Path, precision: str, threads: int = VALIDATION_THREADS,
                 outputs: dict[str, str] | None = None):
        """`outputs`: {output name: blob} as the conversion recorded it; None: the net's one output as "output"."""
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
        options.use_int8_inference = precision == "int8"  # the layers with int8_scale_term compute in int8
        options.use_vulkan_compute = False
        if self._net.load_param(str(param)) != 0 or self._net.load_model(str(weights)) != 0:
            raise ConverterError(f"ncnn cannot load {param.name} / {weights.name}", hint="the files are damaged; re-export")
        summary = read_param(param)
        self._input_blob = summary.inputs[0]
        self._outputs = outputs or {"output": summary.outputs[0]}

    @property
    def options(self):
        """The ncnn.Option the net runs with (threads, fp16 storage and arithmetic, ...)."""
        return self._net.opt

    def extractor(self):
        """A fresh ncnn extractor of the loaded net, for reading intermediate blobs."""
        return self._net.create_extractor()

    def run_outputs(self, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
        import ncnn

        outputs: dict[str, list[np.ndarray]] = {name: [] for name in self._outputs}
        for sample in np.ascontiguousarray(batch_nchw, dtype=np.float32):
            extractor = self._net.create_extractor()
            extractor.input(self._input_blob, ncnn.Mat(np.ascontiguousarray(sample)).clone())
            for name, blob in self._outputs.items():
                status, result = extractor.extract(blob)
                if status != 0:
                    raise ConverterError(f"ncnn failed to compute {blob} (code {status})", hint="re-export")
                outputs[name].append(np.array(result, dtype=np.float32))
        return {name: np.stack(values) for name, values in outputs.items()}
