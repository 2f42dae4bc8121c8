"""Running ncnn .param/.bin pairs with the ncnn wheel, one C x H x W sample at a time."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.artifact import VALIDATION_THREADS
from core.errors import ConverterError, InputError
from graph.ncnn_param import Endpoints, endpoints, parse_ncnn_param


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
