"""The ncnn side of explain: a .param read as layers (graph.ncnn_param), run with light mode off so every blob
stays extractable."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.errors import ConverterError
from graph.explain_ops import WEIGHTED_KINDS, ArtifactOp
from targets.ncnn.runner import NcnnRunner, read_param

NCNN_KINDS = {
    "Convolution": "CONV_2D", "ConvolutionDepthWise": "DEPTHWISE_CONV_2D", "InnerProduct": "FULLY_CONNECTED",
    "ReLU": "RELU", "Clip": "RELU6", "Concat": "CONCATENATION", "Sigmoid": "LOGISTIC", "HardSwish": "HARD_SWISH",
    "Softmax": "SOFTMAX", "TanH": "TANH", "Reduction": "MEAN", "Split": "SPLIT",
}


NCNN_BINARY_OPS = {0: "ADD", 1: "SUB", 2: "MUL", 3: "DIV"}


class NcnnGraph:
    """An ncnn .param read as layers, run with light mode off so every blob stays extractable.

    The .bin is not parsed: weighted layers carry their weight shape (from num_output, kernel and
    weight_data_size), not their values, so they pair with ONNX layers by shape and graph order."""

    def __init__(self, param: Path, weights: Path, precision: str):
        self.input = read_param(param).inputs[0]
        self._runner = NcnnRunner(param, weights, precision)  # the options parity ran the artifact with
        self._labels: dict[str, str] = {}
        self.ops = tuple(self._layers(param))

    def tensor_name(self, blob: str) -> str:
        return self._labels.get(blob, blob)

    def _layers(self, param: Path):
        from graph.ncnn_param import parse_ncnn_param

        for index, layer in enumerate(parse_ncnn_param(param)):
            self._labels.update({top: f"{layer.name}:{top}" for top in layer.outputs})
            kind = _ncnn_kind(layer)
            activation = layer.get(9, 0) != 0
            yield ArtifactOp(index, f"{layer.type} {layer.name}", kind, layer.inputs, layer.outputs,
                             _ncnn_weight_shape(kind, layer), None, activation)

    def run(self, batch_nchw: np.ndarray, blobs: list[str]) -> dict[str, np.ndarray]:
        """{blob: float32 value with a batch axis}, one sample at a time (ncnn has no batch axis)."""
        import ncnn

        values: dict[str, list[np.ndarray]] = {blob: [] for blob in blobs}
        for sample in np.ascontiguousarray(batch_nchw, dtype=np.float32):
            extractor = self._runner.extractor()
            extractor.set_light_mode(False)  # keep every blob, not only the ones still needed
            extractor.input(self.input, ncnn.Mat(np.ascontiguousarray(sample)).clone())
            for blob in blobs:
                status, mat = extractor.extract(blob)
                if status != 0:
                    raise ConverterError(f"ncnn failed to compute blob {blob} (code {status})", hint="re-export")
                values[blob].append(np.array(mat, dtype=np.float32))
        return {blob: np.stack(arrays) for blob, arrays in values.items()}


def _ncnn_kind(layer) -> str:
    if layer.type == "BinaryOp":
        return NCNN_BINARY_OPS.get(layer.get(0, 0), "BINARY_OP")
    if layer.type == "Pooling":
        average, global_pooling = layer.get(0, 0) == 1, layer.get(4, 0) == 1
        return ("MEAN" if global_pooling else "AVERAGE_POOL_2D") if average else "MAX_POOL_2D"
    return NCNN_KINDS.get(layer.type, layer.type)


def _ncnn_weight_shape(kind: str, layer) -> tuple[int, ...] | None:
    """The weight's shape in ONNX layout, from ncnn's num_output (0), kernel (1, 11) and weight_data_size
    (6 for convolutions, 2 for InnerProduct)."""
    size_key = 2 if kind == "FULLY_CONNECTED" else 6
    if kind not in WEIGHTED_KINDS or size_key not in layer.params:
        return None
    outputs, size = int(layer.get(0, 0)), int(layer.params[size_key])
    if kind == "FULLY_CONNECTED":
        return (outputs, size // max(outputs, 1))
    kernel_w = int(layer.get(1, 0))
    kernel_h = int(layer.get(11, kernel_w))
    return (outputs, size // max(outputs * kernel_h * kernel_w, 1), kernel_h, kernel_w)
