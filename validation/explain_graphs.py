"""The artifact side of `explain`: a TFLite, ncnn or Core ML model read as a list of ops, and run keeping every
tensor.

The readers describe their ops in TFLite's vocabulary (an ncnn Convolution is a CONV_2D, a BinaryOp add is
an ADD, an ML Program conv is a CONV_2D) so one pairing rule serves all, and all return every tensor in
ONNX's NCHW layout.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Hashable

import numpy as np

from core.errors import ConverterError

WEIGHTED_KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
# The same values, in another number format or copied (CAST: an ML Program's float32 <-> float16).
PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE", "SPLIT", "CAST")
# TFLite schema tensor types: numpy dtypes of constant buffers.
TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


@dataclass(frozen=True)
class ArtifactOp:
    index: int  # position in the artifact's execution order
    label: str  # what the artifact calls it: "CONV_2D", "Convolution convclip_0"
    kind: str  # TFLite builtin op name; ncnn layers are mapped onto these
    inputs: tuple[Hashable, ...]  # the non-constant input tensors
    outputs: tuple[Hashable, ...]
    weight_shape: tuple[int, ...] | None  # weighted ops: the weight's shape in ONNX layout (OIHW, or out x in)
    weight: np.ndarray | None  # its values (dequantized), when the reader can read them
    fused_activation: bool


def load_artifact_graph(model_dir: Path, entry: dict):
    """The reader for a manifest artifact entry: TFLiteGraph, NcnnGraph or CoreMLGraph."""
    path = model_dir / entry["path"]
    if entry["runtime"] == "tflite":
        return TFLiteGraph(path.read_bytes())
    if entry["runtime"] == "coreml":
        from core.artifact import Artifact
        from targets.coreml import preprocessing_of

        artifact = Artifact(path, "coreml", entry["precision"], details=entry["details"])
        return CoreMLGraph(path, preprocessing_of(artifact))
    return NcnnGraph(path, model_dir / entry["files"][1]["path"], entry["precision"])


# ---- TFLite ---------------------------------------------------------------------------------------------


class TFLiteGraph:
    """A .tflite read with the flatbuffer schema that ships with LiteRT, and run keeping every tensor."""

    def __init__(self, model_bytes: bytes):
        from ai_edge_litert import schema_py_generated as schema

        from targets.tflite import tensor_keeping_interpreter

        try:
            self._model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
        except Exception as error:  # the flatbuffer reader raises whatever a damaged buffer trips over
            raise ConverterError(f"cannot read the .tflite file: {error}",
                                 hint="the file is damaged; re-export") from None
        names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
        codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in self._model.operatorCodes]
        graph = self._model.subgraphs[0]
        self._names = [t.name.decode() if isinstance(t.name, bytes) else str(t.name) for t in graph.tensors]
        self.input = int(graph.inputs[0])
        self._producers = {int(out): op for op in graph.operators for out in op.outputs}
        self._kinds = {id(op): names.get(codes[op.opcodeIndex], "CUSTOM") for op in graph.operators}
        self.ops = tuple(self._describe(index, op) for index, op in enumerate(graph.operators))
        self._interpreter = tensor_keeping_interpreter(model_bytes)
        self._details = {d["index"]: d for d in self._interpreter.get_tensor_details()}

    def tensor_name(self, tensor: int) -> str:
        return self._names[tensor]

    def _describe(self, index: int, op) -> ArtifactOp:
        kind = self._kinds[id(op)]
        inputs = tuple(int(i) for i in op.inputs if i >= 0 and self._constant(int(i)) is None)
        weight = None
        if kind in WEIGHTED_KINDS and len(op.inputs) > 1:
            weight = self._constant(int(op.inputs[1]))
            weight = None if weight is None else _tflite_weight_to_onnx(kind, weight)
        activation = getattr(op.builtinOptions, "fusedActivationFunction", 0) if op.builtinOptions is not None else 0
        return ArtifactOp(index, kind, kind, inputs, tuple(int(o) for o in op.outputs),
                          None if weight is None else weight.shape, weight, bool(activation))

    def _constant(self, index: int) -> np.ndarray | None:
        """A constant tensor's values as float32 (dequantized), or None for a tensor computed at run time."""
        tensor = self._model.subgraphs[0].tensors[index]
        data = self._model.buffers[tensor.buffer].data
        if data is not None and len(data):
            array = np.frombuffer(bytes(data), dtype=TFLITE_DTYPES.get(tensor.type, np.uint8))
            return _dequantize_constant(array.reshape(tensor.shape), tensor.quantization)
        producer = self._producers.get(index)  # float16 weights reach the op through a DEQUANTIZE
        if producer is not None and self._kinds[id(producer)] == "DEQUANTIZE":
            return self._constant(int(producer.inputs[0]))
        return None

    def run(self, batch_nchw: np.ndarray, tensors: list[int]) -> dict[int, np.ndarray]:
        """One invocation on a batch of the artifact's batch size: {tensor: float32 value, NCHW}."""
        from targets.tflite import dequantize, quantize

        batch = batch_nchw.transpose(0, 2, 3, 1) if batch_nchw.ndim == 4 else batch_nchw
        self._interpreter.set_tensor(self.input, quantize(np.ascontiguousarray(batch), self._details[self.input]))
        self._interpreter.invoke()
        return {index: tflite_to_nchw(dequantize(self._interpreter.get_tensor(index), self._details[index]))
                for index in tensors}


def tflite_to_nchw(tensor: np.ndarray) -> np.ndarray:
    """4-D TFLite tensors are NHWC. Decided by the format, never by the shape: 1x16x16x16 fits both."""
    return tensor.transpose(0, 3, 1, 2) if tensor.ndim == 4 else tensor


def _dequantize_constant(array: np.ndarray, quantization) -> np.ndarray:
    if array.dtype.kind == "f" or quantization is None or quantization.scale is None or not len(quantization.scale):
        return array.astype(np.float32)
    scale = np.asarray(quantization.scale, np.float32)
    zero_point = np.asarray(quantization.zeroPoint if quantization.zeroPoint is not None else [0], np.float32)
    if scale.size > 1:  # per channel, along quantizedDimension
        shape = [1] * array.ndim
        shape[quantization.quantizedDimension] = -1
        scale, zero_point = scale.reshape(shape), zero_point.reshape(shape) if zero_point.size > 1 else zero_point
    return ((array.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _tflite_weight_to_onnx(kind: str, weight: np.ndarray) -> np.ndarray:
    if kind == "CONV_2D":  # O x H x W x I -> O x I x H x W
        return weight.transpose(0, 3, 1, 2)
    if kind == "DEPTHWISE_CONV_2D":  # 1 x H x W x C -> C x 1 x H x W
        return weight.transpose(3, 0, 1, 2)
    return weight  # FULLY_CONNECTED: out x in, as a transposed-B Gemm


# ---- ncnn -----------------------------------------------------------------------------------------------

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
        from targets.ncnn import NcnnRunner, read_param

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


# ---- Core ML --------------------------------------------------------------------------------------------

MIL_KINDS = {
    "conv": "CONV_2D", "linear": "FULLY_CONNECTED", "relu": "RELU", "relu6": "RELU6", "clip": "RELU6",
    "add": "ADD", "mul": "MUL", "sub": "SUB", "real_div": "DIV", "concat": "CONCATENATION", "sigmoid": "LOGISTIC",
    "softmax": "SOFTMAX", "tanh": "TANH", "max_pool": "MAX_POOL_2D", "avg_pool": "AVERAGE_POOL_2D",
    "reduce_mean": "MEAN", "cast": "CAST", "split": "SPLIT",
}


class CoreMLGraph:
    """An ML Program read from its .mlpackage and run by the reference evaluator, which keeps every value.

    The Core ML runtime exposes no inner tensors, so on macOS too the layers are those of the reference
    evaluator (the same program, executed by the op semantics parity uses on Linux). The program's input
    is the pixels of the ImageType; `run` turns the contract's tensors back into them."""

    def __init__(self, package: Path, preprocessing):
        from targets._mil_reference import is_constant, load_program
        from targets.coreml import INPUT_NAME

        self._program = load_program(package)
        self._preprocessing = preprocessing
        self.input = INPUT_NAME
        # Weights as the program computes them (int8 and palettized ones dequantized by their constexpr op).
        self._constants = self._program.weights()
        constants = {out.name for op in self._program.operations if is_constant(op) for out in op.outputs}
        self.ops = tuple(self._describe(index, op, constants) for index, op in enumerate(self._program.operations)
                         if not is_constant(op))

    def tensor_name(self, name: str) -> str:
        return name

    def _describe(self, index: int, op, constants: set[str]) -> ArtifactOp:
        kind = MIL_KINDS.get(op.type, op.type)
        bound = [binding.name for argument in op.inputs.values() for binding in argument.arguments
                 if binding.WhichOneof("binding") == "name"]
        weight = None
        if op.type in ("conv", "linear") and "weight" in op.inputs:
            weight = self._constants.get(op.inputs["weight"].arguments[0].name)
        if kind == "CONV_2D" and weight is not None and weight.shape[1] == 1 and weight.shape[0] > 1:
            kind = "DEPTHWISE_CONV_2D"  # one input channel per filter: groups == channels
        return ArtifactOp(index, f"{op.type} {op.outputs[0].name}", kind,
                          tuple(name for name in bound if name not in constants),
                          tuple(out.name for out in op.outputs), None if weight is None else weight.shape,
                          weight, False)

    def run(self, batch_nchw: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
        values = self._program.all_values({self.input: self._preprocessing.pixels_from_tensor(batch_nchw)})
        return {name: values[name] for name in tensors}
