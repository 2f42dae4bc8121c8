"""The TFLite side of explain: a .tflite read with the flatbuffer schema that ships with LiteRT, run keeping
every tensor."""
from __future__ import annotations

import numpy as np

from core.errors import ConverterError
from graph.explain_ops import WEIGHTED_KINDS, ArtifactOp
from targets.tflite.runner import dequantize, quantize, tensor_keeping_interpreter

# TFLite schema tensor types: numpy dtypes of constant buffers.
TFLITE_DTYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 7: np.int16, 9: np.int8}


class TFLiteGraph:
    """A .tflite read with the flatbuffer schema that ships with LiteRT, and run keeping every tensor."""

    def __init__(self, model_bytes: bytes):
        from ai_edge_litert import schema_py_generated as schema

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
