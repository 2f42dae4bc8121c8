"""A deterministic simulator of .tflite models: every op computed by our own code, in float64, on any CPU.

Every decision of the int8 recipe (activation ranges, bias corrections, which range method, which tensors stay
float) is computed here instead of in LiteRT, whose float kernels round differently on different CPUs and
thread counts, so the same commit made different int8 files on different machines.

- Float tensors are computed in float64 real arithmetic. Their last bits can still depend on the BLAS a
  convolution runs on (about 1e-16 relative); everything the recipe writes into a file from them is rounded
  to a grid far coarser than that (quantize.RANGE_DIGITS), so it cannot change a byte.
- int8 tensors hold their integer values (exact in float64). Convolutions, depthwise convolutions and fully
  connected layers accumulate `(x - zero point) * weight` exactly, whatever the summation order (in float32
  where no partial sum can reach 2**24, which float32 holds exactly, in float64 elsewhere), then
  requantize as XNNPACK does on x86 (one float32 multiply, rounded half to even): bit-identical everywhere.
  ADD is XNNPACK's integer arithmetic (its multipliers, rounding bias and shift). Other int8 ops (MEAN,
  pooling, activations) are computed on the dequantized values and quantized again, which is LiteRT's
  integer arithmetic up to its fixed-point rounding. On the default MobileNetV2 int8 model, every tensor of
  every op equals what LiteRT with XNNPACK computes (checked op by op on 8 samples); TFLite's reference
  kernels without XNNPACK round differently (one step on 0.1 % of a convolution's values).

Tensors are kept in TFLite's own layout (NHWC); convolutions and pools run NCHW inside torch and come back.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import numpy as np

from core.errors import ConverterError

# TFLite schema enums (schema_py_generated): tensor types, paddings, fused activations.
FLOAT32, FLOAT16, INT32, UINT8, INT64, BOOL, INT16, INT8 = 0, 1, 2, 3, 4, 6, 7, 9
NUMPY_TYPES = {FLOAT32: np.float32, FLOAT16: np.float16, INT32: np.int32, UINT8: np.uint8, INT64: np.int64,
               BOOL: np.bool_, INT16: np.int16, INT8: np.int8}
SAME = 0
RELU, RELU_N1_TO_1, RELU6 = 1, 2, 3
QUANTIZED_TYPES = (INT8, UINT8, INT16)
# Ops that only move or select values: an int8 output keeps its input's scale and zero point.
SHAPE_OPS = ("RESHAPE", "SQUEEZE", "EXPAND_DIMS", "TRANSPOSE", "GATHER", "STRIDED_SLICE", "SLICE", "SPLIT",
             "SPLIT_V", "PACK", "UNPACK")


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]
    type: int
    scale: np.ndarray | None  # float64, one value or one per channel
    zero_point: np.ndarray | None
    quantized_dimension: int
    constant: np.ndarray | None  # the buffer's values, for weights and other constants

    @property
    def quantized(self) -> bool:
        return self.type in QUANTIZED_TYPES and self.scale is not None and len(self.scale) > 0


@dataclass(frozen=True)
class OpInfo:
    index: int
    kind: str  # the builtin op name: "CONV_2D"
    inputs: tuple[int, ...]  # -1: an omitted optional input
    outputs: tuple[int, ...]
    options: object | None  # the builtin options object of TFLite's schema


class Graph:
    """The first subgraph of a .tflite file, read with the schema that ships with LiteRT."""

    def __init__(self, model_bytes: bytes):
        from ai_edge_litert import schema_py_generated as schema

        model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(model_bytes, 0))
        names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
        codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
        subgraph = model.subgraphs[0]
        self.tensors = tuple(_tensor_info(index, tensor, model.buffers) for index, tensor in enumerate(subgraph.tensors))
        self.ops = tuple(OpInfo(index, names.get(codes[op.opcodeIndex], "CUSTOM"), tuple(int(i) for i in op.inputs),
                                tuple(int(o) for o in op.outputs), op.builtinOptions)
                         for index, op in enumerate(subgraph.operators))
        self.inputs = tuple(int(i) for i in subgraph.inputs)
        self.outputs = tuple(int(o) for o in subgraph.outputs)

    def weighted_ops(self) -> list[OpInfo]:
        return [op for op in self.ops if op.kind in WEIGHTED_KINDS]

    def with_float_tensors(self, tensors) -> "Graph":
        """The same graph with `tensors` held in float: what keeping them out of int8 would compute (the ops
        around them read and write float, their int8 weights dequantized)."""
        import copy

        view = copy.copy(self)
        view.tensors = tuple(dataclasses.replace(info, type=FLOAT32, scale=None, zero_point=None)
                             if info.index in set(tensors) else info for info in self.tensors)
        return view


WEIGHTED_KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def _tensor_info(index: int, tensor, buffers) -> TensorInfo:
    name = tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)
    shape = tuple(int(d) for d in tensor.shape) if tensor.shape is not None else ()
    quantization = tensor.quantization
    scale = zero_point = None
    dimension = 0
    if quantization is not None and quantization.scale is not None and len(quantization.scale):
        scale = np.asarray(quantization.scale, dtype=np.float64)
        zero_point = np.asarray(quantization.zeroPoint if quantization.zeroPoint is not None else [0] * len(scale),
                                dtype=np.float64)
        dimension = int(quantization.quantizedDimension)
    data = buffers[tensor.buffer].data if tensor.buffer < len(buffers) else None
    constant = None
    if data is not None and len(data) and tensor.type in NUMPY_TYPES:
        constant = np.frombuffer(bytes(data), dtype=NUMPY_TYPES[tensor.type]).reshape(shape)
    return TensorInfo(index, name, shape, int(tensor.type), scale, zero_point, dimension, constant)


class UnsupportedOp(ConverterError):
    def __init__(self, kind: str):
        super().__init__(f"the int8 simulator does not know the TFLite op {kind}",
                         hint="the model uses an op mobile-export cannot quantize yet; build --target ncnn or "
                              "coreml, or report the op")
        self.kind = kind


# ---- running -------------------------------------------------------------------------------------------

OpHook = Callable[["Run", OpInfo], None]


class Run:
    """One pass of a graph over a batch, op by op: the values of the tensors still needed, as float64 torch
    tensors (integers for int8 tensors). A hook may replace a constant (a bias) in `values` and call
    `recompute` for the op it just saw."""

    def __init__(self, graph: Graph, batch_nhwc: np.ndarray, keep=(), first_sample: int = 0):
        import torch

        self.graph = graph
        self.first_sample = first_sample  # the batch's first sample's position among all simulated samples
        self.samples = len(batch_nhwc)
        # A weighted op's requantization from its accumulator, so `recompute` after a bias edit redoes only that.
        self.finishers: dict[int, Callable] = {}
        self.values: dict = {}
        self.next_op = 0
        self.kept: dict[int, np.ndarray] = {}
        self._wanted = set(keep) | set(graph.outputs)
        self._dead_after: dict[int, list[int]] = {}
        for index, last in _last_uses(graph).items():
            if index not in self._wanted:
                self._dead_after.setdefault(last, []).append(index)
        (input_index,) = graph.inputs
        self.values[input_index] = _from_real(graph.tensors[input_index],
                                              torch.from_numpy(np.asarray(batch_nhwc, np.float64)))
        if input_index in self._wanted:
            self.kept[input_index] = self.real(input_index).numpy().copy()

    @property
    def finished(self) -> bool:
        return self.next_op >= len(self.graph.ops)

    def stored(self, index: int):
        """A tensor's value as stored (integers for int8): computed by this run, or the model's constant (a hook
        may have replaced it in `values`)."""
        return self.values[index] if index in self.values else _constant(self.graph.tensors[index])

    def real(self, index: int):
        """A tensor's real value: dequantized when it is an int8 tensor."""
        info = self.graph.tensors[index]
        value = self.stored(index)
        if info.quantized and info.type != INT32:
            return (value - _broadcast(info.zero_point, info, value)) * _broadcast(info.scale, info, value)
        return value

    def step(self) -> OpInfo:
        """Compute the next op; the values only an earlier op read are dropped first."""
        for index in self._dead_after.pop(self.next_op - 1, ()):
            self.values.pop(index, None)
        self.finishers.clear()  # only the op just computed can be recomputed
        op = self.graph.ops[self.next_op]
        self._store(op)
        self.next_op += 1
        return op

    def recompute(self, op: OpInfo) -> None:
        """The op's outputs again after a constant of it changed: only the requantization when the op was a
        weighted one (a bias enters after the accumulation)."""
        finisher = self.finishers.pop(op.index, None)
        if finisher is None:
            self._store(op)
            return
        self._store_results(op, [finisher()])

    def _store(self, op: OpInfo) -> None:
        import torch

        with torch.no_grad():
            results = _compute(self, op)
        self._store_results(op, results)

    def _store_results(self, op: OpInfo, results: list) -> None:
        for index, value in zip(op.outputs, results):
            self.values[index] = value
            if index in self._wanted:
                self.kept[index] = self.real(index).numpy().copy()

    def to_end(self, after_op: OpHook | None = None) -> dict[int, np.ndarray]:
        while not self.finished:
            op = self.step()
            if after_op is not None:
                after_op(self, op)
        return self.kept


def simulate(graph: Graph, batch_nhwc: np.ndarray, keep=(), after_op: OpHook | None = None,
             chunk: int = 16) -> dict[int, np.ndarray]:
    """Run `graph` on N x H x W x C float inputs (quantized on the way in when the model's input is int8), in
    chunks of `chunk` samples; returns {tensor: real value as float64 numpy} for the graph outputs and every
    tensor in `keep`. `after_op(run, op)` sees each chunk after each op (statistics are gathered there)."""
    parts = [Run(graph, batch_nhwc[start:start + chunk], keep, first_sample=start).to_end(after_op)
             for start in range(0, len(batch_nhwc), chunk)]
    return {index: np.concatenate([part[index] for part in parts]) for index in parts[0]}


def _last_uses(graph: Graph) -> dict[int, int]:
    last = {}
    for op in graph.ops:
        for index in op.inputs:
            if index >= 0:
                last[index] = op.index
    return last


# ---- tensors -------------------------------------------------------------------------------------------


def _constant(info: TensorInfo):
    import torch

    if info.constant is None:
        raise ConverterError(f"tensor {info.name} has no value", hint="the .tflite file is damaged; re-export")
    return torch.from_numpy(np.asarray(info.constant, dtype=np.float64))


def _broadcast(values: np.ndarray, info: TensorInfo, like):
    """Per-tensor or per-channel quantization parameters shaped to broadcast against a tensor of `like`'s rank."""
    import torch

    if len(values) == 1:
        return float(values[0])
    shape = [1] * like.dim()
    shape[info.quantized_dimension] = len(values)
    return torch.from_numpy(values).reshape(shape)


def _from_real(info: TensorInfo, real):
    """A real value stored in `info`'s type: for int8, XNNPACK's conversion: the value times 1/scale in float32,
    rounded half to even, plus the zero point, clamped."""
    import torch

    if not info.quantized or info.type == INT32:
        return real
    low, high = type_bounds(info)
    inverse = torch.from_numpy((1.0 / info.scale.astype(np.float32)).astype(np.float32))
    if len(info.scale) > 1:
        shape = [1] * real.dim()
        shape[info.quantized_dimension] = len(info.scale)
        inverse = inverse.reshape(shape)
    scaled = torch.round(real.float() * inverse).double()
    return scaled.add_(_broadcast(info.zero_point, info, real)).clamp_(low, high)


def type_bounds(info: TensorInfo) -> tuple[int, int]:
    return (-128, 127) if info.type == INT8 else (0, 255) if info.type == UINT8 else (-32768, 32767)


def _activation_bounds(activation: int) -> tuple[float, float]:
    """The real interval a fused activation clamps to."""
    if activation == RELU:
        return 0.0, np.inf
    if activation == RELU6:
        return 0.0, 6.0
    if activation == RELU_N1_TO_1:
        return -1.0, 1.0
    return -np.inf, np.inf


def _activate(real, activation: int):
    import torch

    if activation not in (0, RELU, RELU6, RELU_N1_TO_1):
        raise UnsupportedOp(f"fused activation {activation}")
    low, high = _activation_bounds(activation)
    if np.isfinite(low) or np.isfinite(high):
        real = torch.clamp(real, None if not np.isfinite(low) else low, None if not np.isfinite(high) else high)
    return real


def _output(run: Run, op: OpInfo, real, activation: int = 0, position: int = 0):
    """An op's real result through its fused activation, stored in its output tensor's type."""
    return _from_real(run.graph.tensors[op.outputs[position]], _activate(real, activation))


# ---- ops -----------------------------------------------------------------------------------------------


def _compute(run: Run, op: OpInfo) -> list:
    handler = _OPS.get(op.kind)
    if handler is None:
        raise UnsupportedOp(op.kind)
    result = handler(run, op)
    return result if isinstance(result, list) else [result]


def _option(op: OpInfo, name: str, default):
    value = getattr(op.options, name, default) if op.options is not None else default
    return default if value is None else value


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def _conv(run: Run, op: OpInfo, depthwise: bool):
    """CONV_2D and DEPTHWISE_CONV_2D in NHWC, as a sum over the kernel's taps of shifted inputs times that
    tap's weights (a matrix product for a convolution, a per-channel product for a depthwise one). int8:
    integers accumulated exactly, requantized once."""
    import torch.nn.functional as F

    graph = run.graph
    x_info, w_info, y_info = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]], graph.tensors[op.outputs[0]]
    bias_index = op.inputs[2] if len(op.inputs) > 2 else -1
    weights = run.stored(op.inputs[1])
    stride = (_option(op, "strideH", 1), _option(op, "strideW", 1))
    dilation = (_option(op, "dilationHFactor", 1), _option(op, "dilationWFactor", 1))
    quantized = x_info.quantized and w_info.quantized
    if quantized:
        x = run.values[op.inputs[0]] - float(x_info.zero_point[0])  # zero-point padding = 0 after the shift
        x, weights = integer_operands(x, weights, x_info, depthwise)
    else:
        x = run.real(op.inputs[0])
        if w_info.quantized:  # a float op with int8 weights (float fallback): real weights
            weights = weights * _broadcast(w_info.scale, w_info, weights)
    kernel_h, kernel_w = weights.shape[1], weights.shape[2]
    if _option(op, "padding", SAME) == SAME:
        top, bottom = same_padding(x.shape[1], kernel_h, stride[0], dilation[0])
        left, right = same_padding(x.shape[2], kernel_w, stride[1], dilation[1])
        if top or bottom or left or right:
            x = F.pad(x, (0, 0, left, right, top, bottom))
    # A CONV_2D whose filters read fewer channels than its input has is grouped (the converter writes a
    # depthwise convolution that way at some places): input channels / filter channels groups.
    groups = 1 if depthwise else x.shape[3] // weights.shape[3]
    if not depthwise and (kernel_h * kernel_w > 1 or groups > 1):  # a KxK or grouped convolution: torch's own
        accumulated = F.conv2d(x.permute(0, 3, 1, 2), weights.permute(0, 3, 1, 2).contiguous(), stride=stride,
                               dilation=dilation, groups=groups).permute(0, 2, 3, 1)
    else:
        accumulated = _taps(x, weights, stride, dilation, depthwise)
    return _finished(run, op, accumulated, quantized, x_info, w_info, y_info, bias_index)


# Integers below 2**24 are exact in float32, so a float32 sum of integer products is exact in any order as long as
# no partial sum reaches it; the int8 accumulations then run in float32, in half the time of float64.
FLOAT32_EXACT_INTEGERS = 2 ** 24


def integer_operands(x, weights, x_info: TensorInfo, depthwise: bool):
    """The zero-point-shifted int8 input and the integer weights in float32 when no partial sum can reach 2**24
    (bounded by the largest |input| times the largest sum of |weights| one output adds up), else as they are."""
    low, high = type_bounds(x_info)
    zero_point = float(x_info.zero_point[0])
    largest_input = max(abs(low - zero_point), abs(high - zero_point))
    magnitudes = weights.abs()
    per_output = magnitudes.sum(dim=(0, 1, 2)) if depthwise else magnitudes.reshape(len(magnitudes), -1).sum(dim=1)
    if float(per_output.max()) * largest_input < FLOAT32_EXACT_INTEGERS:
        return x.float(), weights.float()
    return x, weights


def _finished(run, op, accumulated, quantized, x_info, w_info, y_info, bias_index):
    """The weighted op's output; the run keeps how to requantize the same accumulator with another bias."""
    run.finishers[op.index] = lambda: _finish_weighted(run, op, accumulated, quantized, x_info, w_info, y_info,
                                                       bias_index, channel_axis=-1)
    return run.finishers[op.index]()


def _taps(x, weights, stride, dilation, depthwise: bool):
    """A 1x1 convolution (one matrix product) or a depthwise one (one multiply-add per kernel tap), NHWC."""
    kernel_h, kernel_w = weights.shape[1], weights.shape[2]
    out_h = (x.shape[1] - (kernel_h - 1) * dilation[0] - 1) // stride[0] + 1
    out_w = (x.shape[2] - (kernel_w - 1) * dilation[1] - 1) // stride[1] + 1
    accumulated = None
    if depthwise and weights.shape[3] != x.shape[3]:  # a channel multiplier: each input channel feeds several
        x = x.repeat_interleave(weights.shape[3] // x.shape[3], dim=3)
    for row in range(kernel_h):
        for column in range(kernel_w):
            window = x[:, row * dilation[0]: row * dilation[0] + (out_h - 1) * stride[0] + 1: stride[0],
                       column * dilation[1]: column * dilation[1] + (out_w - 1) * stride[1] + 1: stride[1], :]
            if not depthwise:  # weights O x 1 x 1 x I
                return window @ weights[:, 0, 0, :].T
            if accumulated is None:
                accumulated = window * weights[0, row, column]
            else:
                accumulated.addcmul_(window, weights[0, row, column])
    return accumulated


def _fully_connected(run: Run, op: OpInfo):
    graph = run.graph
    x_info, w_info, y_info = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]], graph.tensors[op.outputs[0]]
    bias_index = op.inputs[2] if len(op.inputs) > 2 else -1
    weights = run.stored(op.inputs[1])
    quantized = x_info.quantized and w_info.quantized
    if quantized:
        x = run.values[op.inputs[0]] - float(x_info.zero_point[0])
        x, weights = integer_operands(x, weights, x_info, depthwise=False)
    else:
        x = run.real(op.inputs[0])
        if w_info.quantized:
            weights = weights * _broadcast(w_info.scale, w_info, weights)
    x = x.reshape(-1, weights.shape[1])
    accumulated = x @ weights.T
    keep_dims = bool(_option(op, "keepNumDims", False))
    if keep_dims:
        accumulated = accumulated.reshape(*run.values[op.inputs[0]].shape[:-1], weights.shape[0])
    return _finished(run, op, accumulated, quantized, x_info, w_info, y_info, bias_index)


def _finish_weighted(run, op, accumulated, quantized, x_info, w_info, y_info, bias_index, channel_axis):
    import torch

    activation = _option(op, "fusedActivationFunction", 0)
    bias = None
    if bias_index >= 0:
        bias = run.stored(bias_index)
    if not quantized:
        bias_info = run.graph.tensors[bias_index] if bias_index >= 0 else None
        if bias is not None and bias_info.type == INT32 and bias_info.scale is not None:  # an int8 op's bias
            bias = bias * _broadcast(bias_info.scale, bias_info, bias)
        real = accumulated + (bias if bias is not None else 0.0)
        return _output(run, op, real, activation)
    # int8, as XNNPACK requantizes: the exact integer accumulator plus the int32 bias, converted to float32,
    # times the channel's float32 scale (input scale x weight scale / output scale), rounded half to even.
    if bias is not None:
        accumulated = exact_integer_sum(accumulated, bias)
    if not y_info.quantized:  # an int8 op writing a float tensor (a tensor kept in float): dequantize
        real = accumulated * torch.from_numpy(float(x_info.scale[0]) * w_info.scale)
        return _output(run, op, real, activation)
    scales = requantization_scales(x_info, w_info, y_info)
    q_low, q_high = quantized_activation_bounds(y_info, activation)
    # In float32: a rounded value too large for the zero point to add exactly is clamped anyway.
    quantized_out = torch.round(accumulated.float() * scales).add_(float(y_info.zero_point[0]))
    return quantized_out.clamp_(q_low, q_high).double()


def exact_integer_sum(accumulated, bias):
    """The integer accumulator plus the int32 bias, exactly: in float32 when both and so their sum stay below
    2**24, in float64 otherwise."""
    import torch

    if accumulated.dtype == torch.float32:
        low, high = torch.aminmax(accumulated)
        if max(-float(low), float(high)) + float(bias.abs().max()) < FLOAT32_EXACT_INTEGERS:
            return accumulated + bias.float()
    return accumulated.double() + bias


def requantization_scales(x_info: TensorInfo, w_info: TensorInfo, y_info: TensorInfo):
    """Per output channel, in float32 as XNNPACK computes them: input scale x weight scale / output scale."""
    import torch

    x_scale, y_scale = np.float32(x_info.scale[0]), np.float32(y_info.scale[0])
    return torch.from_numpy((x_scale * w_info.scale.astype(np.float32) / y_scale).astype(np.float32))


def quantized_activation_bounds(info: TensorInfo, activation: int) -> tuple[float, float]:
    """A fused activation's clamp in the int8 domain of the op's output."""
    low, high = _activation_bounds(activation)
    type_low, type_high = type_bounds(info)
    scale, zero_point = float(info.scale[0]), float(info.zero_point[0])
    q_low = max(type_low, round(low / scale) + zero_point) if np.isfinite(low) else type_low
    q_high = min(type_high, round(high / scale) + zero_point) if np.isfinite(high) else type_high
    return float(q_low), float(q_high)


def _elementwise(function):
    def handler(run: Run, op: OpInfo):
        inputs = [run.real(index) for index in op.inputs]
        return _output(run, op, function(*inputs), _option(op, "fusedActivationFunction", 0))
    return handler


_real_add = _elementwise(lambda a, b: a + b)


def _add(run: Run, op: OpInfo):
    """ADD; all-int8, as XNNPACK computes it (LiteRT's default on CPUs): each input times an integer multiplier
    of 20 significant bits, summed with a rounding bias, shifted right. Computed on dequantized values instead,
    one value in a few thousand lands one step away, and on MobileNetV2 that step grows through the later
    layers until top-1 answers change (the simulator then read 0.973 where LiteRT read 0.940)."""
    import torch

    graph = run.graph
    a_info, b_info, y_info = (graph.tensors[index] for index in (*op.inputs[:2], op.outputs[0]))
    if not (a_info.quantized and b_info.quantized and y_info.quantized):
        return _real_add(run, op)
    (a_multiplier, b_multiplier), shift = _add_multipliers(a_info, b_info, y_info)
    bias = (1 << (shift - 1)) - a_multiplier * int(a_info.zero_point[0]) - b_multiplier * int(b_info.zero_point[0])
    a, b = (run.stored(index) for index in op.inputs[:2])
    accumulated = a.to(torch.int64) * a_multiplier + b.to(torch.int64) * b_multiplier + bias
    result = torch.div(accumulated, 1 << shift, rounding_mode="floor").double().add_(float(y_info.zero_point[0]))
    return result.clamp_(*quantized_activation_bounds(y_info, _option(op, "fusedActivationFunction", 0)))


def _add_multipliers(a_info: TensorInfo, b_info: TensorInfo, y_info: TensorInfo) -> tuple[tuple[int, int], int]:
    """XNNPACK's integer form of an int8 addition: each input's scale over the output's, in float32, as an
    integer multiplier whose largest has 21 bits, and the right shift that undoes them."""
    y_scale = np.float32(y_info.scale[0])
    relative = [np.float32(np.float32(info.scale[0]) / y_scale) for info in (a_info, b_info)]
    exponent = int(np.array(max(abs(r) for r in relative), np.float32).view(np.uint32) >> 23) - 127
    shift = 20 - exponent
    multipliers = []
    for value in relative:  # abs(value) x 2^shift by adding to the float's exponent, rounded half to even
        scaled = (np.array(abs(value), np.float32).view(np.uint32) + np.uint32(shift << 23)).view(np.float32)
        multipliers.append(int(np.rint(scaled)) * (-1 if value < 0 else 1))
    return (multipliers[0], multipliers[1]), shift


def _unary(function):
    def handler(run: Run, op: OpInfo):
        return _output(run, op, function(run.real(op.inputs[0])))
    return handler


def _mean(run: Run, op: OpInfo):
    axes = [int(a) for a in np.asarray(_constant(run.graph.tensors[op.inputs[1]])).reshape(-1)]
    keep = bool(_option(op, "keepDims", False))
    return _output(run, op, run.real(op.inputs[0]).mean(dim=axes, keepdim=keep))


def _pool(kind: str):
    def handler(run: Run, op: OpInfo):
        import torch.nn.functional as F

        x = run.real(op.inputs[0]).permute(0, 3, 1, 2)
        kernel = (_option(op, "filterHeight", 1), _option(op, "filterWidth", 1))
        stride = (_option(op, "strideH", 1), _option(op, "strideW", 1))
        if _option(op, "padding", SAME) == SAME:
            top, bottom = same_padding(x.shape[2], kernel[0], stride[0], 1)
            left, right = same_padding(x.shape[3], kernel[1], stride[1], 1)
        else:
            top = bottom = left = right = 0
        if kind == "max":
            padded = F.pad(x, (left, right, top, bottom), value=-np.inf)
            result = F.max_pool2d(padded, kernel, stride)
        else:  # TFLite averages over the valid part of each window only
            padded = F.pad(x, (left, right, top, bottom))
            ones = F.pad(x.new_ones((1, 1, *x.shape[2:])), (left, right, top, bottom))
            result = F.avg_pool2d(padded, kernel, stride) / F.avg_pool2d(ones, kernel, stride)
        return _output(run, op, result.permute(0, 2, 3, 1), _option(op, "fusedActivationFunction", 0))
    return handler


def _pad(run: Run, op: OpInfo):
    import torch.nn.functional as F

    paddings = np.asarray(_constant(run.graph.tensors[op.inputs[1]]), dtype=np.int64)
    flat = [int(v) for pair in paddings[::-1] for v in pair]  # torch pads the last axis first
    source, target = run.graph.tensors[op.inputs[0]], run.graph.tensors[op.outputs[0]]
    value = float(run.real(op.inputs[2]).reshape(-1)[0]) if op.kind == "PADV2" and len(op.inputs) > 2 else 0.0
    if source.quantized and _same_parameters(source, target):  # int8 PAD pads with the quantized pad value
        stored_value = float(_from_real(target, _scalar_tensor(value)))
        return F.pad(run.values[op.inputs[0]], flat, value=stored_value)
    return _output(run, op, F.pad(run.real(op.inputs[0]), flat, value=value))


def _scalar_tensor(value: float):
    import torch

    return torch.tensor(value, dtype=torch.float64)


def _same_parameters(source: TensorInfo, target: TensorInfo) -> bool:
    return (source.quantized == target.quantized and source.type == target.type and
            (not source.quantized or (np.array_equal(source.scale, target.scale)
                                      and np.array_equal(source.zero_point, target.zero_point))))


def _reshape(run: Run, op: OpInfo):
    x = run.values[op.inputs[0]]
    shape = list(run.graph.tensors[op.outputs[0]].shape)
    shape[0] = -1 if shape and shape[0] == run.graph.tensors[op.inputs[0]].shape[0] else shape[0]
    return _same_quantization(run, op, x.reshape(shape) if shape else x.reshape(-1))


def _same_quantization(run: Run, op: OpInfo, stored, position: int = 0):
    """A value moved without arithmetic: kept as stored when input and output share quantization, else
    requantized through its real value."""
    return _requantized_between(run.graph.tensors[op.inputs[0]], run.graph.tensors[op.outputs[position]], stored)


def _transpose(run: Run, op: OpInfo):
    permutation = [int(p) for p in np.asarray(_constant(run.graph.tensors[op.inputs[1]])).reshape(-1)]
    return _same_quantization(run, op, run.values[op.inputs[0]].permute(*permutation).contiguous())


def _gather(run: Run, op: OpInfo):
    import torch

    axis = int(_option(op, "axis", 0))
    indices = torch.from_numpy(np.asarray(_constant(run.graph.tensors[op.inputs[1]]), dtype=np.int64))
    x = run.values[op.inputs[0]]
    axis = axis % x.dim()
    gathered = torch.index_select(x, axis, indices.reshape(-1))
    if indices.dim() != 1:
        gathered = gathered.reshape(*x.shape[:axis], *indices.shape, *x.shape[axis + 1:])
    return _same_quantization(run, op, gathered)


def _concatenation(run: Run, op: OpInfo):
    import torch

    axis = int(_option(op, "axis", 0))
    real = torch.cat([run.real(index) for index in op.inputs], dim=axis)
    return _output(run, op, real, _option(op, "fusedActivationFunction", 0))


def _strided_slice(run: Run, op: OpInfo):
    graph = run.graph
    x = run.values[op.inputs[0]]
    begin, end, strides = (np.asarray(_constant(graph.tensors[i]), dtype=np.int64).reshape(-1) for i in op.inputs[1:4])
    begin_mask, end_mask = _option(op, "beginMask", 0), _option(op, "endMask", 0)
    if _option(op, "ellipsisMask", 0) or _option(op, "newAxisMask", 0) or _option(op, "shrinkAxisMask", 0):
        raise UnsupportedOp("STRIDED_SLICE with ellipsis, new-axis or shrink masks")
    index = []
    for axis in range(x.dim()):
        if axis >= len(begin):
            index.append(slice(None))
            continue
        start = None if begin_mask >> axis & 1 else int(begin[axis])
        stop = None if end_mask >> axis & 1 else int(end[axis])
        if axis == 0:  # the batch axis holds the whole simulated batch
            start, stop = None, None
        index.append(slice(start, stop, int(strides[axis])))
    return _same_quantization(run, op, x[tuple(index)])


def _slice(run: Run, op: OpInfo):
    graph = run.graph
    x = run.values[op.inputs[0]]
    begin, size = (np.asarray(_constant(graph.tensors[i]), dtype=np.int64).reshape(-1) for i in op.inputs[1:3])
    index = [slice(None) if axis == 0 else slice(int(b), None if s < 0 else int(b + s))
             for axis, (b, s) in enumerate(zip(begin, size))]
    return _same_quantization(run, op, x[tuple(index)])


def _split(run: Run, op: OpInfo):
    axis = int(np.asarray(_constant(run.graph.tensors[op.inputs[0]])).reshape(-1)[0])
    x = run.values[op.inputs[1]]
    parts = x.chunk(len(op.outputs), dim=axis)
    source = run.graph.tensors[op.inputs[1]]
    return [_requantized_between(source, run.graph.tensors[out], part) for out, part in zip(op.outputs, parts)]


def _split_v(run: Run, op: OpInfo):
    sizes = [int(s) for s in np.asarray(_constant(run.graph.tensors[op.inputs[1]])).reshape(-1)]
    axis = int(np.asarray(_constant(run.graph.tensors[op.inputs[2]])).reshape(-1)[0])
    x = run.values[op.inputs[0]]
    parts = x.split(sizes, dim=axis)
    source = run.graph.tensors[op.inputs[0]]
    return [_requantized_between(source, run.graph.tensors[out], part) for out, part in zip(op.outputs, parts)]


def _requantized_between(source: TensorInfo, target: TensorInfo, stored):
    if _same_parameters(source, target):
        return stored
    real = (stored - float(source.zero_point[0])) * float(source.scale[0]) if source.quantized else stored
    return _from_real(target, real)


def _quantize(run: Run, op: OpInfo):
    return _output(run, op, run.real(op.inputs[0]))


def _dequantize(run: Run, op: OpInfo):
    return run.real(op.inputs[0])


def _softmax(run: Run, op: OpInfo):
    import torch

    beta = float(_option(op, "beta", 1.0))
    return _output(run, op, torch.softmax(run.real(op.inputs[0]) * beta, dim=-1))


def _resize(mode: str):
    def handler(run: Run, op: OpInfo):
        import torch.nn.functional as F

        size = [int(v) for v in np.asarray(_constant(run.graph.tensors[op.inputs[1]])).reshape(-1)]
        x = run.real(op.inputs[0]).permute(0, 3, 1, 2)
        if mode == "nearest":
            result = F.interpolate(x, size=size, mode="nearest")
        else:
            align = bool(_option(op, "alignCorners", False))
            result = F.interpolate(x, size=size, mode="bilinear", align_corners=align)
        return _output(run, op, result.permute(0, 2, 3, 1))
    return handler


def _hard_swish(x):
    import torch

    return x * torch.clamp(x + 3.0, 0.0, 6.0) / 6.0


def _logistic(x):
    import torch

    return torch.sigmoid(x)


def _leaky_relu(run: Run, op: OpInfo):
    import torch

    alpha = float(_option(op, "alpha", 0.2))
    x = run.real(op.inputs[0])
    return _output(run, op, torch.where(x >= 0, x, alpha * x))


def _squeeze(run: Run, op: OpInfo):
    shape = list(run.graph.tensors[op.outputs[0]].shape)
    shape[0] = -1
    return _same_quantization(run, op, run.values[op.inputs[0]].reshape(shape))


def _maximum_minimum(function):
    def handler(run: Run, op: OpInfo):
        return _output(run, op, function(run.real(op.inputs[0]), run.real(op.inputs[1])))
    return handler


def _relu(low, high):
    def handler(run: Run, op: OpInfo):
        import torch

        return _output(run, op, torch.clamp(run.real(op.inputs[0]), low, high))
    return handler


def _torch_op(name):
    def function(*args):
        import torch

        return getattr(torch, name)(*args)
    return function


_OPS: dict[str, Callable] = {
    "CONV_2D": lambda run, op: _conv(run, op, depthwise=False),
    "DEPTHWISE_CONV_2D": lambda run, op: _conv(run, op, depthwise=True),
    "FULLY_CONNECTED": _fully_connected,
    "ADD": _add,
    "SUB": _elementwise(lambda a, b: a - b),
    "MUL": _elementwise(lambda a, b: a * b),
    "DIV": _elementwise(lambda a, b: a / b),
    "MAXIMUM": _maximum_minimum(_torch_op("maximum")),
    "MINIMUM": _maximum_minimum(_torch_op("minimum")),
    "MEAN": _mean,
    "AVERAGE_POOL_2D": _pool("average"),
    "MAX_POOL_2D": _pool("max"),
    "PAD": _pad,
    "PADV2": _pad,
    "RESHAPE": _reshape,
    "SQUEEZE": _squeeze,
    "TRANSPOSE": _transpose,
    "GATHER": _gather,
    "CONCATENATION": _concatenation,
    "STRIDED_SLICE": _strided_slice,
    "SLICE": _slice,
    "SPLIT": _split,
    "SPLIT_V": _split_v,
    "QUANTIZE": _quantize,
    "DEQUANTIZE": _dequantize,
    "HARD_SWISH": _unary(_hard_swish),
    "LOGISTIC": _unary(_logistic),
    "TANH": _unary(_torch_op("tanh")),
    "RELU": _relu(0.0, None),
    "RELU6": _relu(0.0, 6.0),
    "RELU_N1_TO_1": _relu(-1.0, 1.0),
    "RELU_0_TO_1": _relu(0.0, 1.0),
    "LEAKY_RELU": _leaky_relu,
    "SOFTMAX": _softmax,
    "RESIZE_BILINEAR": _resize("bilinear"),
    "RESIZE_NEAREST_NEIGHBOR": _resize("nearest"),
}
