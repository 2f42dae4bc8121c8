"""The weights of an fp32 ncnn .bin, layer by layer, as pnnx writes them.

A .bin has no index: each layer's `load_model` reads its arrays in a fixed order, so a reader must know every
weighted layer type's layout. Arrays read with ModelBin type 0 start with a 4-byte storage flag (0: float32);
type 1 arrays (biases, scales) are bare float32. Layers outside WEIGHTLESS and LAYOUTS stop the walk with a
typed error naming them: guessing a layout would silently misplace every later weight.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from core.errors import ConverterError
from graph.ncnn_param import NcnnLayer

FLOAT32_FLAG = 0

# Layer types whose load_model reads nothing (ncnn's src/layer/*.cpp), among those pnnx writes for vision models.
WEIGHTLESS = frozenset({
    "Input", "Split", "Concat", "Slice", "Crop", "Reshape", "Flatten", "Permute", "Squeeze", "ExpandDims",
    "BinaryOp", "UnaryOp", "Eltwise", "ReLU", "Clip", "Sigmoid", "HardSigmoid", "HardSwish", "Swish", "Mish",
    "TanH", "ELU", "GELU", "SELU", "Softmax", "Pooling", "Interp", "ShuffleChannel", "Padding", "Reduction",
    "Dropout", "Noop", "Exp", "Log", "Power", "Threshold", "Tile", "Dequantize", "Quantize", "Requantize",
    "ArgMax", "CopyTo", "Erf", "Fold", "Unfold", "PixelShuffle", "Reorg", "MatMul",
})


@dataclass(frozen=True)
class Array:
    """One array a layer reads: `flagged` arrays carry ModelBin's storage flag before their values."""

    name: str
    count: int
    flagged: bool


def _convolution(layer: NcnnLayer) -> tuple[Array, ...]:
    return (Array("weight", int(layer.get(6)), True),
            *((Array("bias", int(layer.get(0)), False),) if layer.get(5) else ()))


def _inner_product(layer: NcnnLayer) -> tuple[Array, ...]:
    return (Array("weight", int(layer.get(2)), True),
            *((Array("bias", int(layer.get(0)), False),) if layer.get(1) else ()))


def _channels(*names: str, count_key: int = 0, flagged: bool = False):
    return lambda layer: tuple(Array(name, int(layer.get(count_key)), flagged) for name in names)


def _prelu(layer: NcnnLayer) -> tuple[Array, ...]:
    return (Array("slope", int(layer.get(0)), False),)


def _scale(layer: NcnnLayer) -> tuple[Array, ...]:
    count = int(layer.get(0))
    return (Array("scale", count, False), *((Array("bias", count, False),) if layer.get(1) else ()))


def _memory_data(layer: NcnnLayer) -> tuple[Array, ...]:
    shape = [int(layer.get(key)) for key in (0, 1, 11, 2) if layer.get(key)]
    return (Array("data", int(np.prod(shape)) if shape else 0, False),)


LAYOUTS = {
    "Convolution": _convolution,
    "ConvolutionDepthWise": _convolution,
    "Deconvolution": _convolution,
    "DeconvolutionDepthWise": _convolution,
    "InnerProduct": _inner_product,
    "BatchNorm": _channels("slope", "mean", "variance", "bias"),
    "InstanceNorm": _channels("gamma", "beta"),
    "PReLU": _prelu,
    "Scale": _scale,
    "MemoryData": _memory_data,
}


@dataclass(frozen=True)
class LayerWeights:
    """One layer's arrays, in .bin order, as float32, and the bytes they were read from."""

    layer: NcnnLayer
    arrays: dict[str, np.ndarray]
    stored: bytes


def read_weights(layers: tuple[NcnnLayer, ...], data: bytes) -> tuple[LayerWeights, ...]:
    """Every layer with its arrays, in .param order. Raises ConverterError for a layer type whose layout is not
    known here, or a .bin that is not the fp32 file of these layers."""
    unknown = sorted({layer.type for layer in layers} - WEIGHTLESS - set(LAYOUTS))
    if unknown:
        raise ConverterError(f"ncnn int8: the weights of {', '.join(unknown)} layers cannot be placed in the .bin",
                             hint="the fp32 and fp16 ncnn models are fine; use the TFLite int8 model for int8")
    position, read = 0, []
    for layer in layers:
        arrays, start = {}, position
        for array in LAYOUTS[layer.type](layer) if layer.type in LAYOUTS else ():
            if array.flagged:
                (flag,) = struct.unpack_from("<I", data, position)
                if flag != FLOAT32_FLAG:
                    raise ConverterError(f"ncnn int8: {layer.name}'s {array.name} is not stored as float32",
                                         hint="build int8 from the fp32 .param/.bin pair")
                position += 4
            arrays[array.name] = np.frombuffer(data, np.float32, array.count, position).copy()
            position += 4 * array.count
        read.append(LayerWeights(layer, arrays, data[start:position]))
    if position != len(data):
        raise ConverterError(f"ncnn int8: the layers read {position} bytes of a {len(data)}-byte .bin",
                             hint="the .param and .bin are not a pair; re-export")
    return tuple(read)

