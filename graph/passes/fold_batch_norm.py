"""Fold BatchNormalization into the Conv before it, in float64: the same float32 weights on any CPU.

torch.onnx.export can fold BatchNorm itself (TrainingMode.EVAL), but it computes the folded weights with
PyTorch's float32 kernels, and their last bit depends on the machine: on MobileNetV2, 47 of 106 folded
initializers came out one unit in the last place apart when MKL was held to AVX2 (bench/reproducibility.py),
and every artifact made from them differed. The ONNX file is exported with its BatchNormalization nodes kept
(TrainingMode.PRESERVE on a model in eval mode) and folded here with numpy in float64, whose +, x, / and sqrt are
correctly rounded on every IEEE machine, then rounded once to float32: the same bytes everywhere.

A BatchNormalization is folded when its input is the only output of a Conv with constant weights (and bias) that
nothing else reads; any other BatchNormalization stays as it is.
"""
from __future__ import annotations

from collections import Counter

import numpy as np

DEFAULT_EPSILON = 1e-5  # ONNX BatchNormalization's default


def fold_batch_norms(model) -> int:
    """Fold in place; returns how many BatchNormalization nodes were folded."""
    from onnx import numpy_helper

    graph = model.graph
    constants = {initializer.name: initializer for initializer in graph.initializer}
    # The exporter shares equal parameters (two BatchNorms with the same statistics) through Identity nodes.
    constants.update({node.output[0]: constants[node.input[0]] for node in graph.node
                      if node.op_type == "Identity" and node.input[0] in constants})
    producers = {output: node for node in graph.node for output in node.output}
    readers = Counter(name for node in graph.node for name in node.input)
    readers.update(output.name for output in graph.output)

    def float64(name: str) -> np.ndarray:
        return numpy_helper.to_array(constants[name]).astype(np.float64)

    folded = []
    for norm in graph.node:
        conv = producers.get(norm.input[0]) if norm.op_type == "BatchNormalization" else None
        if conv is None or not _foldable(conv, norm, constants, readers):
            continue
        scale, shift, mean, variance = (float64(name) for name in norm.input[1:5])
        factor = scale / np.sqrt(variance + _epsilon(norm))
        weight = float64(conv.input[1])
        bias = float64(conv.input[2]) if _has_bias(conv) else np.zeros(weight.shape[0])
        prefix = conv.name or conv.output[0]
        weight_name, bias_name = f"{prefix}.folded_weight", f"{prefix}.folded_bias"
        graph.initializer.append(numpy_helper.from_array(
            (weight * factor.reshape(-1, *[1] * (weight.ndim - 1))).astype(np.float32), weight_name))
        graph.initializer.append(numpy_helper.from_array(((bias - mean) * factor + shift).astype(np.float32), bias_name))
        conv.input[:] = [conv.input[0], weight_name, bias_name]
        conv.output[0] = norm.output[0]
        folded.append(norm)
    for norm in folded:
        graph.node.remove(norm)
    _drop_unread(graph)
    return len(folded)


def _foldable(conv, norm, constants, readers) -> bool:
    if conv.op_type != "Conv" or len(conv.output) != 1 or readers[conv.output[0]] != 1:
        return False
    if any(attribute.name == "training_mode" and attribute.i for attribute in norm.attribute):
        return False
    if len(norm.output) != 1 or len(norm.input) != 5 or not all(name in constants for name in norm.input[1:5]):
        return False
    return conv.input[1] in constants and (not _has_bias(conv) or conv.input[2] in constants)


def _has_bias(conv) -> bool:
    return len(conv.input) > 2 and bool(conv.input[2])


def _epsilon(norm) -> float:
    return next((attribute.f for attribute in norm.attribute if attribute.name == "epsilon"), DEFAULT_EPSILON)


def _drop_unread(graph) -> None:
    """Initializers and Identity nodes of parameters nothing reads any more."""
    def read() -> set[str]:
        return {name for node in graph.node for name in node.input} | {output.name for output in graph.output}

    for node in [n for n in graph.node if n.op_type == "Identity" and n.output[0] not in read()]:
        graph.node.remove(node)
    still_read = read()
    for initializer in [i for i in graph.initializer if i.name not in still_read]:
        graph.initializer.remove(initializer)
