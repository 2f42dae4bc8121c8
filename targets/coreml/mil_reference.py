"""A reference evaluator for Core ML ML Programs: runs the program saved in an `.mlpackage` on any OS.

The Core ML runtime exists only on Apple systems. To prove parity on Linux, this module reads the program
the converter wrote (operations from the package's protobuf spec, weights from its weights/weight.bin)
and executes it op by op with torch, following the ML Program op semantics (coremltools' MIL op docs).

Precision: every op computes in float32 and its result is then stored in the dtype the program declares
for it. An fp16 program therefore rounds to float16 after every op, as its casts say; accumulation inside
one op (a convolution's sum) is float32, which the Core ML CPU and GPU back ends also use (the Neural
Engine may differ slightly). An op this module does not implement is never skipped: loading the program
raises UnverifiedOp, so parity cannot pass without having run every op.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.errors import ConverterError
from targets.coreml.tools import import_coremltools

BLOB_SENTINEL = 0xDEADBEEF
BLOB_METADATA = np.dtype([("sentinel", "<u4"), ("mil_dtype", "<u4"), ("size", "<u8"), ("offset", "<u8")])


class UnverifiedOp(ConverterError):
    """The program uses an operation (or a form of one) the reference evaluator does not implement."""

    def __init__(self, op_type: str, detail: str = ""):
        super().__init__(
            f"not verified: op {op_type}" + (f" ({detail})" if detail else ""),
            hint="the Core ML reference evaluator cannot run this op, so parity was not proven; export on macOS "
            "(real Core ML runtime) or add the op to targets/coreml/mil_reference.py",
        )
        self.op_type = op_type


def _torch():
    import torch

    return torch


# ML Program tensor data types (MIL.proto DataType names) -> torch dtypes.
_DTYPES = {
    "FLOAT16": "float16", "FLOAT32": "float32", "FLOAT64": "float64", "BOOL": "bool",
    "INT8": "int8", "UINT8": "uint8", "INT16": "int16", "INT32": "int32", "INT64": "int64", "UINT32": "uint32",
}
# The dtype names the `cast` op takes.
_CAST_NAMES = {"fp16": "float16", "fp32": "float32", "int32": "int32", "int16": "int16", "int8": "int8",
               "uint8": "uint8", "bool": "bool"}


def _torch_dtype(proto_name: str):
    if proto_name not in _DTYPES:
        raise UnverifiedOp("tensor", f"data type {proto_name}")
    return getattr(_torch(), _DTYPES[proto_name])


# ---- reading the program -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Program:
    """The main function of an ML Program: its inputs, operations and outputs, with weights resolved."""

    input_names: tuple[str, ...]
    input_shapes: dict[str, tuple[int, ...]]
    output_names: tuple[str, ...]
    operations: tuple  # MIL_pb2.Operation messages, in program order
    weights_dir: Path

    @property
    def op_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(op.type for op in self.operations if op.type != "const").items()))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _Execution(self).run(feeds)

    def all_values(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every tensor the program computes or reads (weights dequantized), by name, as float32: for explain."""
        execution = _Execution(self)
        execution.run(feeds)
        return execution.float_values()

    def weights(self) -> dict[str, np.ndarray]:
        """The constants (const ops, and constexpr_* ops dequantized), by name, as float32, without running
        the program: constants depend on constants only."""
        execution = _Execution(self)
        execution.execute([op for op in self.operations if is_constant(op)])
        return execution.float_values()


def is_constant(op) -> bool:
    return op.type == "const" or op.type.startswith("constexpr_")  # constexpr_*: quantized weights, expanded


def _main_function(mlpackage: Path):
    """The saved model (not loaded into a runtime) and the main function of its ML Program."""
    ct = import_coremltools()
    model = ct.models.MLModel(str(mlpackage), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise ConverterError(f"{mlpackage.name} is not an ML Program", hint="re-export with the coreml target")
    return model, spec.mlProgram.functions["main"]


def class_labels(mlpackage: Path) -> tuple[str, ...] | None:
    """A classifier's labels in class-index order, as its `classify` op lists them; None if it has none."""
    _, function = _main_function(mlpackage)
    for operation in function.block_specializations[function.opset].operations:
        if operation.type == "classify":
            return tuple(str(label) for label in _Execution.immediate(operation.inputs["classes"].arguments[0].value))
    return None


def load_program(mlpackage: Path) -> Program:
    """Read the main function of the ML Program saved in `mlpackage`; raise UnverifiedOp for unknown ops."""
    model, function = _main_function(mlpackage)
    block = function.block_specializations[function.opset]
    unknown = sorted({op.type for op in block.operations if op.type not in OPS})
    if unknown:
        raise UnverifiedOp(", ".join(unknown))
    for op in block.operations:
        if len(op.blocks):
            raise UnverifiedOp(op.type, "nested blocks")
    shapes = {
        item.name: tuple(d.constant.size for d in item.type.tensorType.dimensions) for item in function.inputs
    }
    return Program(
        input_names=tuple(item.name for item in function.inputs), input_shapes=shapes,
        output_names=tuple(block.outputs), operations=tuple(block.operations), weights_dir=Path(model.weights_dir),
    )


class _BlobFile:
    """weights/weight.bin: a 64-byte header, then per value a 64-byte record (sentinel, dtype, size, offset)."""

    def __init__(self, path: Path):
        self.path = path
        self.data = np.fromfile(path, dtype=np.uint8)

    def read(self, offset: int, dtype, shape: tuple[int, ...]):
        torch = _torch()
        record = np.frombuffer(self.data[offset : offset + BLOB_METADATA.itemsize].tobytes(), BLOB_METADATA)[0]
        if int(record["sentinel"]) != BLOB_SENTINEL:
            raise ConverterError(f"{self.path.name} has no weight record at offset {offset}",
                                 hint="the .mlpackage is damaged; re-export")
        itemsize = torch.empty((), dtype=dtype).element_size()
        expected = math.prod(shape) * itemsize
        if int(record["size"]) != expected:
            raise UnverifiedOp("const", f"weight record of {int(record['size'])} bytes for {shape} {dtype} "
                                        "(sub-byte or packed storage)")
        start = int(record["offset"])
        raw = self.data[start : start + expected].copy()
        return torch.from_numpy(raw).view(dtype).reshape(shape)


class _Execution:
    def __init__(self, program: Program):
        self.program = program
        self.values: dict[str, object] = {}
        self.blobs: dict[str, _BlobFile] = {}

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = _torch()
        for name in self.program.input_names:
            self.values[name] = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=np.float32))
        self.execute(self.program.operations)
        return {name: value if isinstance(value, str) else value.float().numpy()
                for name, value in ((name, self.values[name]) for name in self.program.output_names)}

    def execute(self, operations) -> None:
        torch = _torch()
        # One thread: each op is small, and on a shared machine a second thread spinning costs far more
        # than it gains (measured: 30x slower for MobileNetV2 with another busy process on 2 cores).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            with torch.no_grad():
                for op in operations:
                    self._execute(op)
        finally:
            torch.set_num_threads(threads)

    def float_values(self) -> dict[str, np.ndarray]:
        return {name: value.float().numpy() for name, value in self.values.items()
                if not isinstance(value, (str, list)) and value.is_floating_point()}

    def _execute(self, op) -> None:
        operands = {key: self._argument(key, argument, op.type) for key, argument in op.inputs.items()}
        for key, value in op.attributes.items():
            if key != "name":
                operands[key] = self._value(value)
        results = OPS[op.type](**operands)
        results = results if isinstance(results, tuple) else (results,)
        if len(results) != len(op.outputs):
            raise ConverterError(f"op {op.type} gave {len(results)} outputs, the program declares {len(op.outputs)}",
                                 hint="a bug in the reference evaluator; please report it")
        for declared, result in zip(op.outputs, results):
            self.values[declared.name] = _as_declared(op.type, declared, result)

    def _argument(self, key: str, argument, op_type: str):
        values = [self.values[b.name] if b.WhichOneof("binding") == "name" else self._value(b.value)
                  for b in argument.arguments]
        return values if len(values) > 1 or key in _VARIADIC.get(op_type, ()) else values[0]

    def _value(self, value):
        if value.WhichOneof("value") == "blobFileValue":
            tensor_type = value.type.tensorType
            shape = tuple(d.constant.size for d in tensor_type.dimensions)
            blob = value.blobFileValue
            file_name = blob.fileName.removeprefix("@model_path/weights/")
            if file_name not in self.blobs:
                self.blobs[file_name] = _BlobFile(self.program.weights_dir / file_name)
            return self.blobs[file_name].read(blob.offset, _torch_dtype(_dtype_name(tensor_type.dataType)), shape)
        return self.immediate(value)

    @staticmethod
    def immediate(value):
        """A value written into the program itself: a tensor (or string), or a list of them (a classifier's labels)."""
        torch = _torch()
        kind = value.WhichOneof("value")
        if kind == "immediateValue" and value.immediateValue.WhichOneof("value") == "list":
            return [_Execution.immediate(item) for item in value.immediateValue.list.values]
        if kind != "immediateValue" or value.immediateValue.WhichOneof("value") != "tensor":
            raise UnverifiedOp("const", f"value of kind {kind}")
        tensor_type = value.type.tensorType
        dtype_name = _dtype_name(tensor_type.dataType)
        shape = tuple(d.constant.size for d in tensor_type.dimensions)
        tensor = value.immediateValue.tensor
        field = tensor.WhichOneof("value")
        if dtype_name == "STRING":
            strings = list(tensor.strings.values)
            return strings[0] if not shape else strings
        if field == "bytes":
            data = np.frombuffer(tensor.bytes.values, dtype=_DTYPES[dtype_name]).copy()
            return torch.from_numpy(data).reshape(shape)
        items = list(getattr(tensor, field).values) if field else []
        return torch.tensor(items, dtype=_torch_dtype(dtype_name)).reshape(shape)


def _dtype_name(number: int) -> str:
    from coremltools.proto import MIL_pb2

    return MIL_pb2.DataType.Name(number)


def _as_declared(op_type: str, declared, result):
    """Store a result in the dtype the program declares (fp16 rounding happens here), checking its shape."""
    if isinstance(result, (str, list)):
        return result
    if declared.type.WhichOneof("type") == "dictionaryType":
        return result.float()  # a classifier's scores, in class-index order, stand for the label -> score dictionary
    tensor_type = declared.type.tensorType
    dims = tensor_type.dimensions
    if all(d.WhichOneof("dimension") == "constant" for d in dims):
        shape = tuple(d.constant.size for d in dims)
        if tuple(result.shape) != shape:
            raise ConverterError(
                f"the reference evaluator computed shape {tuple(result.shape)} for {declared.name} ({op_type}), "
                f"the program declares {shape}",
                hint="a gap in the reference evaluator's semantics for this op; please report it",
            )
    return result.to(_torch_dtype(_dtype_name(tensor_type.dataType)))


# ---- the operations ------------------------------------------------------------------------------------
# Each takes the op's named inputs and attributes (torch tensors, Python strings) and returns its outputs.
# Float math runs in float32; _as_declared stores the result in the program's dtype.

OPS: dict[str, Callable] = {}
_VARIADIC = {"concat": ("values",)}


def op(*names: str):
    def register(function: Callable) -> Callable:
        for name in names:
            OPS[name] = function
        return function

    return register


def _f(tensor):
    return tensor.float()


def _ints(tensor) -> list[int]:
    return [int(v) for v in tensor.reshape(-1).tolist()]


def _scalar(value, default=None):
    if value is None:
        return default
    return value.item() if hasattr(value, "item") else value


@op("const")
def _const(val):
    return val


@op("identity")
def _identity(x):
    return x


@op("cast")
def _cast(x, dtype):
    if dtype not in _CAST_NAMES:
        raise UnverifiedOp("cast", f"to {dtype}")
    return x.to(getattr(_torch(), _CAST_NAMES[dtype]))


_BINARY = {
    "add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
    "real_div": lambda x, y: x / y, "maximum": lambda x, y: _torch().maximum(x, y),
    "minimum": lambda x, y: _torch().minimum(x, y), "pow": lambda x, y: x**y,
}


def _binary(function):
    def run(x, y):
        if x.is_floating_point() or y.is_floating_point():
            return function(_f(x), _f(y))
        return function(x, y)

    return run


for _name, _function in _BINARY.items():
    OPS[_name] = _binary(_function)


@op("relu")
def _relu(x):
    return _torch().relu(_f(x))


@op("relu6")
def _relu6(x):
    return _torch().clamp(_f(x), 0.0, 6.0)


@op("clip")
def _clip(x, alpha, beta):
    return _torch().clamp(_f(x), float(alpha), float(beta))


@op("sigmoid")
def _sigmoid(x):
    return _torch().sigmoid(_f(x))


@op("sigmoid_hard")
def _sigmoid_hard(x, alpha=None, beta=None):
    alpha, beta = _scalar(alpha, 0.2), _scalar(beta, 0.5)
    return _torch().clamp(alpha * _f(x) + beta, 0.0, 1.0)


@op("thresholded_relu")
def _thresholded_relu(x, alpha):
    """x where x >= alpha, else 0 (coremltools writes torch's hardswish as this, sigmoid_hard and mul)."""
    x = _f(x)
    return _torch().where(x >= float(_scalar(alpha)), x, _torch().zeros_like(x))


@op("tanh")
def _tanh(x):
    return _torch().tanh(_f(x))


@op("silu")
def _silu(x):
    return _torch().nn.functional.silu(_f(x))


@op("leaky_relu")
def _leaky_relu(x, alpha=None):
    return _torch().nn.functional.leaky_relu(_f(x), _scalar(alpha, 0.01))


@op("gelu")
def _gelu(x, mode="EXACT"):
    functional = _torch().nn.functional
    if mode == "EXACT":
        return functional.gelu(_f(x))
    if mode == "TANH_APPROXIMATION":
        return functional.gelu(_f(x), approximate="tanh")
    if mode == "SIGMOID_APPROXIMATION":
        return _f(x) * _torch().sigmoid(1.702 * _f(x))
    raise UnverifiedOp("gelu", f"mode {mode}")


@op("softmax")
def _softmax(x, axis=None):
    return _torch().softmax(_f(x), dim=int(_scalar(axis, -1)))


@op("upsample_bilinear")
def _upsample_bilinear(x, scale_factor_height=None, scale_factor_width=None, align_corners=None,
                       half_pixel_centers=None):
    """Only the forms torch's bilinear interpolate converts to: half-pixel centers (align_corners=False) or
    aligned corners; TensorFlow's legacy asymmetric sampling is not verified."""
    aligned = bool(_scalar(align_corners, False))
    half_pixel = bool(_scalar(half_pixel_centers, not aligned))
    if not aligned and not half_pixel:
        raise UnverifiedOp("upsample_bilinear", "align_corners=False without half-pixel centers")
    scale = (float(_scalar(scale_factor_height, 1)), float(_scalar(scale_factor_width, 1)))
    return _torch().nn.functional.interpolate(_f(x), scale_factor=scale, mode="bilinear", align_corners=aligned)


# resize_bilinear's sampling modes that torch's bilinear interpolate has: align_corners True / False.
_RESIZE_SAMPLING = {"ALIGN_CORNERS": True, "STRICT_ALIGN_CORNERS": True, "UNALIGN_CORNERS": False}


@op("resize_bilinear")
def _resize_bilinear(x, target_size_height=None, target_size_width=None, sampling_mode=None):
    mode = str(_scalar(sampling_mode, "DEFAULT"))
    if mode not in _RESIZE_SAMPLING:
        raise UnverifiedOp("resize_bilinear", f"sampling_mode {mode}")
    size = (int(_scalar(target_size_height)), int(_scalar(target_size_width)))
    return _torch().nn.functional.interpolate(_f(x), size=size, mode="bilinear", align_corners=_RESIZE_SAMPLING[mode])


def _reduce(function):
    def run(x, axes=None, keep_dims=None):
        dims = _ints(axes) if axes is not None else list(range(x.dim()))
        return function(_f(x), dims, bool(_scalar(keep_dims, False)))

    return run


OPS["reduce_mean"] = _reduce(lambda x, dims, keep: x.mean(dim=dims, keepdim=keep))
OPS["reduce_sum"] = _reduce(lambda x, dims, keep: x.sum(dim=dims, keepdim=keep))
OPS["reduce_max"] = _reduce(lambda x, dims, keep: x.amax(dim=dims, keepdim=keep))
OPS["reduce_min"] = _reduce(lambda x, dims, keep: x.amin(dim=dims, keepdim=keep))


def _explicit_padding(op_type, x, kernel, strides, dilations, pad_type, pad) -> list[int]:
    """Per spatial axis (begin, end) padding, from ML Program's pad_type: valid / custom / same / same_lower."""
    spatial = x.shape[2:]
    if pad_type == "valid":
        return [0] * (2 * len(spatial))
    if pad_type == "custom":
        return _ints(pad)
    if pad_type not in ("same", "same_lower"):
        raise UnverifiedOp(op_type, f"pad_type {pad_type}")
    pads = []
    for size, k, s, d in zip(spatial, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        pads += [small, large] if pad_type == "same" else [large, small]
    return pads


def _torch_pad(pads: list[int]) -> list[int]:
    """ML Program lists (begin, end) from the first spatial axis; torch's F.pad starts at the last."""
    pairs = [pads[i : i + 2] for i in range(0, len(pads), 2)]
    return [v for pair in reversed(pairs) for v in pair]


@op("conv")
def _conv(x, weight, strides=None, pad_type="valid", pad=None, dilations=None, groups=None, bias=None):
    functional = _torch().nn.functional
    rank = x.dim() - 2
    if rank not in (1, 2, 3):
        raise UnverifiedOp("conv", f"{rank} spatial dimensions")
    strides = _ints(strides) if strides is not None else [1] * rank
    dilations = _ints(dilations) if dilations is not None else [1] * rank
    pads = _explicit_padding("conv", x, list(weight.shape[2:]), strides, dilations, pad_type, pad)
    padded = functional.pad(_f(x), _torch_pad(pads))
    convolve = (functional.conv1d, functional.conv2d, functional.conv3d)[rank - 1]
    return convolve(padded, _f(weight), None if bias is None else _f(bias), stride=strides, dilation=dilations,
                    groups=int(_scalar(groups, 1)))


def _pool_padding(op_type, x, kernel_sizes, strides, pad_type, pad, ceil_mode):
    kernel = _ints(kernel_sizes)
    strides = _ints(strides) if strides is not None else [1] * len(kernel)
    pads = _explicit_padding(op_type, x, kernel, strides, [1] * len(kernel), pad_type, pad)
    if bool(_scalar(ceil_mode, False)) and any(pads):
        # torch's ceil_mode rule for windows that start in the end padding differs; not implemented.
        raise UnverifiedOp(op_type, "ceil_mode with padding")
    return kernel, strides, pads


@op("max_pool")
def _max_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, ceil_mode=None):
    functional = _torch().nn.functional
    kernel, strides, pads = _pool_padding("max_pool", x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    padded = functional.pad(_f(x), _torch_pad(pads), value=-math.inf)
    pool = (functional.max_pool1d, functional.max_pool2d, functional.max_pool3d)[len(kernel) - 1]
    return pool(padded, kernel, strides, ceil_mode=bool(_scalar(ceil_mode, False)))


@op("avg_pool")
def _avg_pool(x, kernel_sizes, strides=None, pad_type="valid", pad=None, exclude_padding_from_average=None,
              ceil_mode=None):
    torch = _torch()
    functional = torch.nn.functional
    kernel, strides, pads = _pool_padding("avg_pool", x, kernel_sizes, strides, pad_type, pad, ceil_mode)
    pool = (functional.avg_pool1d, functional.avg_pool2d, functional.avg_pool3d)[len(kernel) - 1]
    ceil = bool(_scalar(ceil_mode, False))
    sums = pool(functional.pad(_f(x), _torch_pad(pads)), kernel, strides, ceil_mode=ceil) * math.prod(kernel)
    if bool(_scalar(exclude_padding_from_average, False)):
        ones = functional.pad(torch.ones_like(_f(x[:1, :1])), _torch_pad(pads))
        counts = pool(ones, kernel, strides, ceil_mode=ceil) * math.prod(kernel)
    elif ceil:
        raise UnverifiedOp("avg_pool", "ceil_mode counting padding")
    else:
        counts = math.prod(kernel)
    return sums / counts


@op("linear")
def _linear(x, weight, bias=None):
    return _torch().nn.functional.linear(_f(x), _f(weight), None if bias is None else _f(bias))


@op("matmul")
def _matmul(x, y, transpose_x=None, transpose_y=None):
    x, y = _f(x), _f(y)
    if bool(_scalar(transpose_x, False)):
        x = x.transpose(-1, -2)
    if bool(_scalar(transpose_y, False)):
        y = y.transpose(-1, -2)
    return x @ y


@op("batch_norm")
def _batch_norm(x, mean, variance, gamma=None, beta=None, epsilon=None):
    return _torch().nn.functional.batch_norm(
        _f(x), _f(mean), _f(variance), None if gamma is None else _f(gamma), None if beta is None else _f(beta),
        training=False, eps=float(_scalar(epsilon, 1e-5)),
    )


@op("reshape")
def _reshape(x, shape):
    # A 0 in the target shape keeps that axis of the input.
    target = [x.shape[i] if size == 0 else size for i, size in enumerate(_ints(shape))]
    return x.reshape(target)


@op("transpose")
def _transpose(x, perm):
    return x.permute(_ints(perm))


@op("squeeze")
def _squeeze(x, axes=None):
    if axes is None:
        return x.squeeze()
    dims = sorted((a % x.dim() for a in _ints(axes)), reverse=True)
    for dim in dims:
        x = x.squeeze(dim)
    return x


@op("expand_dims")
def _expand_dims(x, axes):
    rank = x.dim() + len(_ints(axes))
    for axis in sorted(a % rank for a in _ints(axes)):
        x = x.unsqueeze(axis)
    return x


@op("concat")
def _concat(values, axis, interleave=None):
    torch = _torch()
    axis = int(_scalar(axis)) % values[0].dim()
    if not bool(_scalar(interleave, False)):
        return torch.cat(values, dim=axis)
    # Interleaved (equal shapes): output[i::k] along the axis is values[i], as in a channel shuffle.
    stacked = torch.stack(values, dim=axis + 1)
    return stacked.flatten(axis, axis + 1)


@op("split")
def _split(x, axis, num_splits=None, split_sizes=None):
    axis = int(_scalar(axis))
    sizes = _ints(split_sizes) if split_sizes is not None else [x.shape[axis] // int(_scalar(num_splits))] * int(
        _scalar(num_splits))
    return tuple(x.split(sizes, dim=axis))


@op("slice_by_index")
def _slice_by_index(x, begin, end, stride=None, begin_mask=None, end_mask=None, squeeze_mask=None):
    rank = x.dim()
    begin, end = _ints(begin), _ints(end)
    stride = _ints(stride) if stride is not None else [1] * rank
    begin_mask = [bool(v) for v in _ints(begin_mask)] if begin_mask is not None else [False] * rank
    end_mask = [bool(v) for v in _ints(end_mask)] if end_mask is not None else [False] * rank
    squeeze_mask = [bool(v) for v in _ints(squeeze_mask)] if squeeze_mask is not None else [False] * rank
    if any(s <= 0 for s in stride):
        raise UnverifiedOp("slice_by_index", "non-positive stride")
    index = []
    for axis in range(rank):
        if squeeze_mask[axis]:
            index.append(begin[axis])
            continue
        start = None if begin_mask[axis] else begin[axis]
        stop = None if end_mask[axis] else end[axis]
        index.append(slice(start, stop, stride[axis]))
    return x[tuple(index)]


def _along_axis(tensor, like, axis):
    """A scalar as it is, or a per-channel vector shaped to broadcast along `axis` of `like`."""
    if tensor is None:
        return 0.0
    if tensor.dim() == 0 or axis is None:
        return tensor.float()
    shape = [1] * like.dim()
    shape[int(_scalar(axis)) % like.dim()] = -1
    return tensor.float().reshape(shape)


@op("constexpr_affine_dequantize")
def _affine_dequantize(quantized_data, zero_point, scale, axis):
    """(quantized - zero_point) * scale, with per-channel zero point and scale along `axis`."""
    return (quantized_data.float() - _along_axis(zero_point, quantized_data, axis)) * _along_axis(scale, quantized_data,
                                                                                                  axis)


_QUANTIZED_RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


@op("quantize")
def _quantize(input, scale, output_dtype, zero_point=None, axis=None):  # noqa: A002 (MIL's argument name)
    """iOS 17's activation quantization: round(input / scale) + zero_point, clipped to the integer type."""
    if output_dtype not in _QUANTIZED_RANGES:
        raise UnverifiedOp("quantize", f"to {output_dtype}")
    low, high = _QUANTIZED_RANGES[output_dtype]
    levels = _torch().round(input.float() / _along_axis(scale, input, axis)) + _along_axis(zero_point, input, axis)
    return levels.clamp(low, high).to(getattr(_torch(), output_dtype))


@op("dequantize")
def _dequantize(input, scale, zero_point=None, axis=None):  # noqa: A002
    """(input - zero_point) * scale, the inverse of quantize up to its rounding."""
    return (input.float() - _along_axis(zero_point, input, axis)) * _along_axis(scale, input, axis)


@op("constexpr_blockwise_shift_scale")
def _blockwise_shift_scale(data, scale, offset=None):
    """(data - offset) * scale, where scale and offset hold one value per block of each axis."""

    def expanded(tensor):
        for axis in range(data.dim()):
            tensor = tensor.float().repeat_interleave(data.shape[axis] // tensor.shape[axis], dim=axis)
        return tensor

    shifted = data.float() if offset is None else data.float() - expanded(offset)
    return shifted * expanded(scale)


@op("constexpr_lut_to_dense")
def _lut_to_dense(indices, lut, shape):
    """lut[index] for each packed index; iOS 16 packs n-bit indices into bytes, least significant bit first."""
    torch = _torch()
    if lut.dim() != 1:
        raise UnverifiedOp("constexpr_lut_to_dense", "grouped look-up tables (iOS 18 form)")
    bits = int(math.log2(lut.shape[0]))
    count = math.prod(_ints(shape))
    stream = np.unpackbits(indices.numpy().astype(np.uint8), bitorder="little")[: count * bits].reshape(count, bits)
    positions = stream.astype(np.int64) @ (1 << np.arange(bits, dtype=np.int64))
    return lut[torch.from_numpy(positions)].reshape(_ints(shape))


@op("classify")
def _classify(probabilities, classes):
    """A classifier's outputs: the label of the top score, and the scores (the label -> score dictionary)."""
    scores = probabilities.float()
    if scores.numel() != len(classes):
        raise UnverifiedOp("classify", f"{scores.numel()} scores for {len(classes)} classes")
    return str(classes[int(scores.reshape(-1).argmax())]), scores
