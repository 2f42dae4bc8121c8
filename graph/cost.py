"""Per-layer work of a network graph: multiply-adds, bytes moved, layer kind and precision.

Reads the two graph formats we meet: an ncnn `.param` (the benchncnn networks the projection is calibrated on,
and our own ncnn export) and an `.onnx` file (what every artifact was converted from). Both end up as the same
`GraphCost`, so the cost model never knows which one it was given. Pure functions: a path in, numbers out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from core.errors import InputError
from graph.ncnn_param import NcnnLayer, parse_ncnn_param
from graph.onnx_view import OnnxView, static_shape

# Input sizes benchncnn feeds each network (benchmark/benchncnn.cpp, `benchmark("name", ncnn::Mat(w, h, c))`);
# three of the .param files carry no shape hints, so this is the only place their size is stated.
BENCHNCNN_INPUT_WHC = {
    "squeezenet": (227, 227, 3), "squeezenet_int8": (227, 227, 3), "alexnet": (227, 227, 3),
    "squeezenet_ssd": (300, 300, 3), "squeezenet_ssd_int8": (300, 300, 3),
    "mobilenet_ssd": (300, 300, 3), "mobilenet_ssd_int8": (300, 300, 3),
    "mobilenet_yolo": (416, 416, 3), "yolov4-tiny": (416, 416, 3), "mobilenetv2_yolov3": (352, 352, 3),
    "yolo-fastestv2": (352, 352, 3), "FastestDet": (352, 352, 3), "nanodet_m": (320, 320, 3),
    "yolo-fastest-1.1": (320, 320, 3), "blazeface": (128, 128, 3), "vision_transformer": (384, 384, 3),
}
DEFAULT_INPUT_WHC = (224, 224, 3)  # every other benchncnn network

PRECISION_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
KINDS = ("conv", "winograd", "pointwise", "depthwise", "gemv", "other")

Shape = tuple[int, ...]  # outermost first: (c, h, w), (h, w) or (w,), as ncnn's axis numbers count them


@dataclass(frozen=True)
class LayerCost:
    name: str
    layer_type: str  # ncnn layer type (ONNX ops are mapped onto these)
    kind: str  # one of KINDS: how the cost model groups layers
    macs: int
    weight_bytes: int
    activation_bytes: int  # inputs read + outputs written
    precision: str  # "fp32" | "fp16" | "int8"
    # Convolution and matmul geometry (0 where it does not apply): ncnn packs channels in fours and runs a
    # grouped convolution as one small convolution per group, which the projection's cost model counts.
    in_channels: int = 0
    out_channels: int = 0
    groups: int = 1

    @property
    def bytes_moved(self) -> int:
        return self.weight_bytes + self.activation_bytes


@dataclass(frozen=True)
class GraphCost:
    name: str
    input_shape: Shape
    layers: tuple[LayerCost, ...]

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def bytes_moved(self) -> int:
        return sum(layer.bytes_moved for layer in self.layers)


def graph_cost(path: Path, precision: str = "fp32", input_shape: Shape | None = None) -> GraphCost:
    """Cost of the graph in `path` (.param or .onnx). `input_shape` (c, h, w) is needed only when the file
    does not say it (an ncnn .param without shape hints that is not a benchncnn network)."""
    if precision not in PRECISION_BYTES:
        raise InputError(f"unknown precision {precision!r}", hint=f"use one of {sorted(PRECISION_BYTES)}")
    if not path.is_file():
        raise InputError(f"graph file {path} does not exist", hint="pass an exported .onnx or .ncnn.param file")
    if path.suffix == ".param":
        return _ncnn_cost(path, precision, input_shape)
    if path.suffix == ".onnx":
        return _onnx_cost(path, precision)
    raise InputError(f"cannot read the graph of {path}", hint="pass an .onnx or ncnn .param file")


# ---------------------------------------------------------------------------------------------- ncnn .param

SHAPE_HINT_KEY = 30  # -23330: output shapes written by the converter, "4*outputs, (dims, w, h, c) per output"


def _hinted_shapes(layer: NcnnLayer) -> list[Shape] | None:
    hint = layer.array(SHAPE_HINT_KEY)
    if not hint or len(hint) != 4 * len(layer.outputs):
        return None
    shapes = []
    for index in range(len(layer.outputs)):
        dims, w, h, c = hint[4 * index:4 * index + 4]
        shapes.append({1: (w,), 2: (h, w), 3: (c, h, w)}.get(dims, (w, h, c)))
    return shapes


def _ncnn_cost(path: Path, precision: str, input_shape: Shape | None) -> GraphCost:
    layers = parse_ncnn_param(path)
    model_name = path.name.split(".")[0]
    shapes = infer_ncnn_shapes(layers, input_shape or _input_shape(layers, model_name, path))
    costs = [_ncnn_layer_cost(layer, shapes, precision) for layer in layers if layer.type != "Input"]
    first_input = next(layer for layer in layers if layer.type == "Input")
    return GraphCost(model_name, shapes[first_input.outputs[0]], tuple(costs))


def _input_shape(layers: tuple[NcnnLayer, ...], model_name: str, path: Path) -> Shape:
    input_layer = next((layer for layer in layers if layer.type == "Input"), None)
    if input_layer is None:
        raise InputError(f"{path} has no Input layer", hint="pass a complete ncnn .param")
    w, h, c = (input_layer.get(key, 0) for key in (0, 1, 2))
    if w and h and c:
        return (c, h, w)
    hinted = _hinted_shapes(input_layer)
    if hinted:
        return hinted[0]
    if model_name in BENCHNCNN_INPUT_WHC or model_name in _BENCHNCNN_224:
        w, h, c = BENCHNCNN_INPUT_WHC.get(model_name, DEFAULT_INPUT_WHC)
        return (c, h, w)
    raise InputError(f"{path} does not state its input size",
                     hint="give the input shape (C,H,W), or use the exported .onnx, which records it")


_BENCHNCNN_224 = frozenset({
    "mobilenet", "mobilenet_int8", "mobilenet_v2", "mobilenet_v3", "shufflenet", "shufflenet_v2", "mnasnet",
    "proxylessnasnet", "efficientnet_b0", "efficientnetv2_b0", "regnety_400m", "googlenet", "googlenet_int8",
    "resnet18", "resnet18_int8", "vgg16", "vgg16_int8", "resnet50", "resnet50_int8",
})


def infer_ncnn_shapes(layers: Iterable[NcnnLayer], input_shape: Shape) -> dict[str, Shape | None]:
    """Blob name -> shape. The converter's shape hints win where present; the rest is inferred layer by layer.
    Shapes of detection-output layers are not needed for cost and stay None."""
    shapes: dict[str, Shape | None] = {}
    for layer in layers:
        hinted = _hinted_shapes(layer)
        if layer.type == "Input":
            outputs = [input_shape] * len(layer.outputs)
        elif hinted is not None:
            outputs = hinted
        else:
            inputs = [shapes.get(blob) for blob in layer.inputs]
            rule = _SHAPE_RULES.get(layer.type, _same_as_first)
            outputs = rule(layer, inputs) if all(s is not None for s in inputs) else [None] * len(layer.outputs)
        shapes.update(zip(layer.outputs, outputs))
    return shapes


def _same_as_first(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    return [inputs[0] if inputs else None] * len(layer.outputs)


def _conv_out(size: int, kernel: int, stride: int, dilation: int, pad_before: int, pad_after: int) -> int:
    if pad_before in (-233, -234):  # SAME_UPPER / SAME_LOWER
        return math.ceil(size / stride)
    return (size + pad_before + pad_after - (dilation * (kernel - 1) + 1)) // stride + 1


def _conv_geometry(layer: NcnnLayer) -> dict[str, int]:
    kw = layer.get(1, 0)
    dw = layer.get(2, 1)
    sw = layer.get(3, 1)
    pl = layer.get(4, 0)
    return {"kw": kw, "kh": layer.get(11, kw), "dw": dw, "dh": layer.get(12, dw), "sw": sw,
            "sh": layer.get(13, sw), "pl": pl, "pr": layer.get(15, pl), "pt": layer.get(14, pl),
            "pb": layer.get(16, layer.get(14, pl))}


def _convolution(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    _, h, w = inputs[0]
    g = _conv_geometry(layer)
    return [(layer.get(0), _conv_out(h, g["kh"], g["sh"], g["dh"], g["pt"], g["pb"]),
             _conv_out(w, g["kw"], g["sw"], g["dw"], g["pl"], g["pr"]))]


def _deconvolution(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    _, h, w = inputs[0]
    g = _conv_geometry(layer)
    out_w = (w - 1) * g["sw"] + g["dw"] * (g["kw"] - 1) + 1 - g["pl"] - g["pr"] + layer.get(18, 0)
    out_h = (h - 1) * g["sh"] + g["dh"] * (g["kh"] - 1) + 1 - g["pt"] - g["pb"] + layer.get(19, 0)
    return [(layer.get(0), layer.get(21, 0) or out_h, layer.get(20, 0) or out_w)]


def _pooling(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    c, h, w = inputs[0]
    if layer.get(4, 0):  # global pooling flattens to one value per channel
        return [(c,)]
    if layer.get(7, 0):  # adaptive
        out_w = layer.get(8, 0)
        return [(c, layer.get(18, out_w), out_w)]
    kw = layer.get(1, 0)
    sw = layer.get(2, 1)
    pl = layer.get(3, 0)
    kh, sh, pt = layer.get(11, kw), layer.get(12, sw), layer.get(13, pl)
    pr, pb = layer.get(14, pl), layer.get(15, pt)
    pad_mode = layer.get(5, 0)
    if pad_mode in (2, 3):
        return [(c, math.ceil(h / sh), math.ceil(w / sw))]
    if pad_mode == 0:  # "full" padding: ncnn pads the tail so the last window fits (ceil mode)
        pr += (sw - (w + pl + pr - kw) % sw) % sw
        pb += (sh - (h + pt + pb - kh) % sh) % sh
    return [(c, (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1)]


def _inner_product(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    shape = inputs[0]
    return [(shape[0], layer.get(0)) if len(shape) == 2 else (layer.get(0),)]


def _gemm(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    a = inputs[0]
    rows = a[-1] if layer.get(2, 0) else (a[-2] if len(a) >= 2 else 1)
    return [(layer.get(7, 0) or rows, layer.get(8, 0))]


def _broadcast(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    return [max(inputs, key=math.prod)]


def _axis(axis: int, dims: int) -> int:
    return axis + dims if axis < 0 else axis


def _concat(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    axis = _axis(layer.get(0, 0), len(inputs[0]))
    shape = list(inputs[0])
    shape[axis] = sum(s[axis] for s in inputs)
    return [tuple(shape)]


def _slice(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    shape = inputs[0]
    axis = _axis(layer.get(1, 0), len(shape))
    slices = list(layer.array(0)) or [-233] * len(layer.outputs)
    fixed = sum(s for s in slices if s != -233)
    rest = slices.count(-233)
    sizes = [s if s != -233 else (shape[axis] - fixed) // rest for s in slices]
    return [tuple(size if i == axis else d for i, d in enumerate(shape)) for size in sizes]


def _crop(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    shape = list(inputs[0])
    if len(inputs) == 2:
        reference = inputs[1]
        return [tuple(reference[i - len(shape) + len(reference)] if i >= len(shape) - len(reference) else d
                      for i, d in enumerate(shape))]
    starts, ends, axes = layer.array(9), layer.array(10), layer.array(11)
    if starts:
        for start, end, axis in zip(starts, ends, axes or range(len(starts))):
            axis = _axis(axis, len(shape))
            end = min(end if end >= 0 else shape[axis] + end, shape[axis])
            shape[axis] = end - start
        return [tuple(shape)]
    by_axis = {-1: (0, 3, 6), -2: (1, 4, 7), -3: (2, 5, 8)}  # (offset, size, tail offset) keys for w, h, c
    for axis_from_end, (offset_key, size_key, tail_key) in by_axis.items():
        if len(shape) >= -axis_from_end:
            size = layer.get(size_key, 0)
            shape[axis_from_end] = size or shape[axis_from_end] - layer.get(offset_key, 0) - layer.get(tail_key, 0)
    return [tuple(shape)]


def _reshape(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    shape = inputs[0]
    w, h, c = layer.get(0, -233), layer.get(1, -233), layer.get(2, -233)
    wanted = [c, h, w] if c != -233 else [h, w] if h != -233 else [w]
    # 0 keeps the input's size at the same position counted from the innermost axis
    sized = [shape[len(shape) - len(wanted) + i] if v == 0 and len(shape) - len(wanted) + i >= 0 else v
             for i, v in enumerate(wanted)]
    known = math.prod(v for v in sized if v != -1)
    return [tuple(math.prod(shape) // known if v == -1 else v for v in sized)]


# Permute order types: the new axis order, outermost first, for a (c, h, w) input
_PERMUTE_3D = {0: (0, 1, 2), 1: (0, 2, 1), 2: (1, 0, 2), 3: (1, 2, 0), 4: (2, 0, 1), 5: (2, 1, 0)}


def _permute(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    shape = inputs[0]
    order = layer.get(0, 0)
    if len(shape) == 2:
        return [shape[::-1] if order == 1 else shape]
    if len(shape) == 3:
        return [tuple(shape[i] for i in _PERMUTE_3D[order])]
    return [shape]


def _padding(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    shape = list(inputs[0])
    shape[-1] += layer.get(2, 0) + layer.get(3, 0)
    if len(shape) >= 2:
        shape[-2] += layer.get(0, 0) + layer.get(1, 0)
    if len(shape) == 3:
        shape[0] += layer.get(7, 0) + layer.get(8, 0)
    return [tuple(shape)]


def _interp(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    c, h, w = inputs[0]
    if len(inputs) == 2:
        return [(c, *inputs[1][-2:])]
    out_h = layer.get(3, 0) or int(h * float(layer.get(1, 1.0)))
    out_w = layer.get(4, 0) or int(w * float(layer.get(2, 1.0)))
    return [(c, out_h, out_w)]


def _memory_data(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    w, h, c = layer.get(0, 0), layer.get(1, 0), layer.get(2, 0)
    return [(c, h, w) if c else (h, w) if h else (w,)]


def _reduction(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    shape = inputs[0]
    keepdims = layer.get(4, 0)
    if layer.get(1, 0):
        return [tuple(1 for _ in shape) if keepdims else (1,)]
    axes = {_axis(a, len(shape)) for a in layer.array(3)}
    reduced = tuple(1 if i in axes else d for i, d in enumerate(shape))
    return [reduced if keepdims else tuple(d for i, d in enumerate(shape) if i not in axes) or (1,)]


def _flatten(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape]:
    return [(math.prod(inputs[0]),)]


def _unknown(layer: NcnnLayer, inputs: list[Shape]) -> list[Shape | None]:
    return [None] * len(layer.outputs)


_SHAPE_RULES: dict[str, Callable] = {
    "Convolution": _convolution, "ConvolutionDepthWise": _convolution,
    "Deconvolution": _deconvolution, "DeconvolutionDepthWise": _deconvolution,
    "Pooling": _pooling, "InnerProduct": _inner_product, "Gemm": _gemm,
    "BinaryOp": _broadcast, "Eltwise": _broadcast, "Concat": _concat, "Slice": _slice, "Crop": _crop,
    "Reshape": _reshape, "Permute": _permute, "Padding": _padding, "Interp": _interp,
    "MemoryData": _memory_data, "Reduction": _reduction, "Flatten": _flatten,
    "Split": lambda layer, inputs: [inputs[0]] * len(layer.outputs),
    # detection heads: their outputs feed nothing costly, and their shapes are data-dependent
    "PriorBox": _unknown, "DetectionOutput": _unknown, "YoloDetectionOutput": _unknown,
    "Yolov3DetectionOutput": _unknown,
}

_ZERO_COPY = frozenset({"Split", "Noop", "Reshape", "Flatten"})  # ncnn shares the blob; nothing is moved
_INT8_CAPABLE = frozenset({"Convolution", "ConvolutionDepthWise", "InnerProduct"})


def _ncnn_layer_cost(layer: NcnnLayer, shapes: dict[str, Shape | None], precision: str) -> LayerCost:
    inputs = [shapes.get(blob) for blob in layer.inputs]
    outputs = [shapes.get(blob) for blob in layer.outputs]
    in_elements = sum(math.prod(s) for s in inputs if s)
    out_elements = sum(math.prod(s) for s in outputs if s)
    if layer.type in _ZERO_COPY:
        in_elements = out_elements = 0
    # the _int8 benchncnn networks mark quantized layers with int8_scale_term (param 8)
    layer_precision = "int8" if layer.type in _INT8_CAPABLE and layer.get(8, 0) else precision
    if layer_precision == "int8" and layer.type not in _INT8_CAPABLE:
        layer_precision = "fp32"  # int8 exports run the remaining layers in float
    macs, weights, kind = _ncnn_work(layer, inputs, outputs, out_elements)
    element = PRECISION_BYTES[layer_precision]
    return LayerCost(layer.name, layer.type, kind, int(macs), int(weights * element),
                     int((in_elements + out_elements) * element), layer_precision, *_ncnn_channels(layer, inputs))


def _ncnn_channels(layer: NcnnLayer, inputs: list) -> tuple[int, int, int]:
    """(input channels, output channels, groups) of a convolution or inner product, else (0, 0, 1)."""
    if layer.type.startswith(("Convolution", "Deconvolution")):
        groups = layer.get(7, 1) if "DepthWise" in layer.type else 1
        return (inputs[0][0] if inputs[0] else 0), layer.get(0), groups
    if layer.type == "InnerProduct":
        return layer.get(2, 0) // max(layer.get(0, 1), 1), layer.get(0), 1
    return 0, 0, 1


def _ncnn_work(layer: NcnnLayer, inputs: list, outputs: list, out_elements: int) -> tuple[float, float, str]:
    """(multiply-adds, weight elements, kind) of one layer."""
    kind = "other"
    if layer.type in ("Convolution", "ConvolutionDepthWise", "Deconvolution", "DeconvolutionDepthWise"):
        if not inputs[0] or not outputs[0]:
            raise InputError(f"layer {layer.name} ({layer.type}): cannot infer its input shape",
                             hint="export with shape hints, or pass the .onnx graph instead")
        weights = layer.get(6, 0)
        groups = layer.get(7, 1) if "DepthWise" in layer.type else 1
        g = _conv_geometry(layer)
        in_channels = inputs[0][0]
        per_output = in_channels // groups * g["kh"] * g["kw"]
        if layer.type.startswith("Deconvolution"):
            macs = math.prod(inputs[0]) * layer.get(0) // groups * g["kh"] * g["kw"]
        else:
            macs = out_elements * per_output
        kind = _conv_kind(groups, in_channels, layer.get(0), (g["kh"], g["kw"]), (g["sh"], g["sw"]),
                          (g["dh"], g["dw"]))
        return macs, weights, kind
    if layer.type == "InnerProduct":
        weights = layer.get(2, 0)
        rows = inputs[0][0] if inputs[0] and len(inputs[0]) == 2 else 1
        return out_elements * weights // max(layer.get(0, 1), 1), weights, _matmul_kind(rows)
    if layer.type == "Gemm":
        a = inputs[0] or (1,)
        k = layer.get(9, 0) or a[-1]
        weights = k * layer.get(8, 0) if layer.get(5, 0) else 0
        return out_elements * k, weights, _matmul_kind(out_elements // max(layer.get(8, 1), 1))
    if layer.type == "MultiHeadAttention":
        embed = layer.get(0)
        sequence = inputs[0][0] if inputs[0] and len(inputs[0]) == 2 else 1
        projections = 4 * sequence * embed * embed
        attention = 2 * sequence * sequence * embed
        return projections + attention, 4 * embed * embed, _matmul_kind(sequence)
    if layer.type == "MemoryData":
        return 0, out_elements, kind
    return 0, 0, kind


def _matmul_kind(rows: int) -> str:
    """One input row (a classifier on a pooled vector) streams each weight once: bound by weight bytes, so it
    is "gemv". Many rows are a 1x1 convolution in disguise (a transformer's token matrix): "pointwise"."""
    return "gemv" if rows <= 1 else "pointwise"


def _conv_kind(groups: int, in_channels: int, out_channels: int, kernel: tuple[int, ...],
               stride: tuple[int, ...], dilation: tuple[int, ...]) -> str:
    if groups > 1 and groups == in_channels == out_channels:
        return "depthwise"
    if math.prod(kernel) == 1:
        return "pointwise"
    # ncnn (and XNNPACK) run 3x3 stride-1 convolutions with Winograd: far fewer multiplies than MACs counts
    if groups == 1 and tuple(kernel) == (3, 3) and set(stride) == {1} and set(dilation) == {1}:
        return "winograd"
    return "conv"


# ---------------------------------------------------------------------------------------------- ONNX

# ncnn fuses these into the preceding convolution / inner product (activation_type); so do we, so that an
# ONNX graph and its ncnn conversion count the same layers
_FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSwish", "Mish", "BatchNormalization"})
_ONNX_LAYER_TYPES = {
    "Conv": "Convolution", "ConvTranspose": "Deconvolution", "Gemm": "InnerProduct", "MatMul": "Gemm",
    "Add": "BinaryOp", "Mul": "BinaryOp", "Sub": "BinaryOp", "Div": "BinaryOp", "Concat": "Concat",
    "MaxPool": "Pooling", "AveragePool": "Pooling", "GlobalAveragePool": "Pooling", "GlobalMaxPool": "Pooling",
    "Reshape": "Reshape", "Flatten": "Flatten", "Transpose": "Permute", "Split": "Slice", "Slice": "Crop",
    "Resize": "Interp", "Softmax": "Softmax", "Pad": "Padding", "ReduceMean": "Reduction",
}


def _onnx_cost(path: Path, precision: str) -> GraphCost:
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    except Exception as error:  # onnx raises a zoo of types for a damaged file
        raise InputError(f"{path}: cannot be loaded as ONNX: {error}", hint="pass the exported .onnx") from error
    view = OnnxView(model)
    graph = model.graph
    shapes = {value.name: static_shape(value) for value in (*graph.input, *graph.value_info, *graph.output)}
    initializers = {init.name: tuple(init.dims) for init in graph.initializer}
    shapes.update(initializers)
    layers = []
    for node in graph.node:
        if node.op_type in ("Constant", "Identity", "Shape", "Gather", "Unsqueeze", "Squeeze", "Cast"):
            continue
        if node.op_type in _FUSED_ACTIVATIONS and _fuses_into_producer(node, view):
            continue
        layers.append(_onnx_layer_cost(node, shapes, initializers, precision))
    # ncnn inserts a Split layer for every blob read by more than one layer
    splits = sum(1 for name, readers in view.consumers.items() if len(readers) > 1 and name not in initializers)
    layers.extend(LayerCost(f"split{i}", "Split", "other", 0, 0, 0, precision) for i in range(splits))
    real_inputs = [value for value in graph.input if value.name not in initializers]
    if not real_inputs:
        raise InputError(f"{path}: the graph has no input", hint="pass the exported .onnx")
    return GraphCost(path.stem, shapes[real_inputs[0].name][1:], tuple(layers))


def _fuses_into_producer(node, view: OnnxView) -> bool:
    producer = view.producers.get(node.input[0])
    return (producer is not None and producer.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")
            and view.use_count(node.input[0]) == 1)


def _onnx_layer_cost(node, shapes: dict, initializers: dict, precision: str) -> LayerCost:
    inputs = [shapes.get(name) for name in node.input if name and name not in initializers]
    outputs = [shapes.get(name) for name in node.output]
    layer_type = _ONNX_LAYER_TYPES.get(node.op_type, node.op_type)
    weight_elements = sum(math.prod(initializers[name]) for name in node.input if name in initializers)
    out_elements = sum(math.prod(s) for s in outputs if s)
    in_elements = sum(math.prod(s) for s in inputs if s)
    macs, kind, channels = 0, "other", (0, 0, 1)
    if node.op_type in ("Conv", "ConvTranspose"):
        weight = initializers.get(node.input[1]) or shapes.get(node.input[1])
        if weight is None or not inputs or inputs[0] is None:
            raise InputError(f"node {node.name} ({node.op_type}): its shapes are not static",
                             hint="export with a fixed --input-shape")
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        kernel_area = math.prod(weight[2:])
        in_channels = inputs[0][1]
        if node.op_type == "Conv":
            macs = out_elements * weight[1] * kernel_area
            out_channels = weight[0]
        else:
            macs = in_elements * weight[1] * kernel_area
            out_channels = weight[1] * groups
        strides = next((tuple(a.ints) for a in node.attribute if a.name == "strides"), (1,) * len(weight[2:]))
        dilations = next((tuple(a.ints) for a in node.attribute if a.name == "dilations"), (1,) * len(weight[2:]))
        kind = _conv_kind(groups, in_channels, out_channels, tuple(weight[2:]), strides, dilations)
        channels = (in_channels, out_channels, groups)
    elif node.op_type in ("Gemm", "MatMul"):
        b = initializers.get(node.input[1]) or shapes.get(node.input[1])
        transposed = any(a.name == "transB" and a.i for a in node.attribute)
        depth = (b[-1] if transposed else b[-2]) if b else 0
        columns = (b[-2] if transposed else b[-1]) if b else 1
        macs, kind = out_elements * depth, _matmul_kind(out_elements // max(columns, 1))
        channels = (depth, columns, 1)
    layer_precision = precision if kind != "other" or precision != "int8" else "fp32"
    element = PRECISION_BYTES[layer_precision]
    return LayerCost(node.name or node.op_type, layer_type, kind, int(macs), int(weight_elements * element),
                     int((in_elements + out_elements) * element), layer_precision, *channels)
