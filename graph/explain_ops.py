"""The vocabulary explain pairs layers in: every runtime's reader describes its ops as ArtifactOps of TFLite's
op kinds (an ncnn Convolution is a CONV_2D, a BinaryOp add is an ADD, an ML Program conv is a CONV_2D), so
one pairing rule serves all, and every reader returns inner tensors in ONNX's NCHW layout.

A reader (targets' `explain_graph`) has `input` (the graph input's tensor id), `ops` (ArtifactOps in
execution order), `tensor_name(id)` and `run(batch_nchw, tensor_ids) -> {id: float32 NCHW value}`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable

import numpy as np

WEIGHTED_KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


# The same values, in another number format or copied (CAST: an ML Program's float32 <-> float16).
PASS_THROUGH = ("QUANTIZE", "DEQUANTIZE", "SPLIT", "CAST")


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
