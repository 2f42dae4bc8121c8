"""Activation range equalization: an ONNX → ONNX pass that prepares a float graph for int8.

int8 activations share one scale per tensor. When one channel of a tensor peaks at 6 and another at 0.05,
the small channel is left with a handful of int8 levels. For a chain Conv_a → ReLU/ReLU6 → Conv_b we
multiply channel i of Conv_a (weights and bias) by s_i >= 1 and divide the matching input channel of
Conv_b by s_i: the float function is unchanged, and the small channels now use the whole int8 range.

ReLU6 is not scale-equivariant, so s_i is kept below 6 / (the largest value channel i reached on the
calibration photos): on those photos the clip at 6 is never hit by a scaled channel and the graph computes
exactly what it did. When Conv_b is depthwise its per-channel int8 weight scales absorb 1/s_i for free;
when it is a full convolution, shrinking a weight column costs that column precision, so only the
geometric middle, sqrt(s_i), is taken (the trade-off of cross-layer equalization, Nagel et al. 2019).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph.onnx_run import inner_tensors
from graph.onnx_view import OnnxView, conv_group

# Scaled calibration peaks stay at half the clip: photos brighter than the calibration set then still
# pass the ReLU6 unclipped (measured on held-out photos: 0.95 left a float deviation of cosine 0.996).
HEADROOM = 0.5
MAX_SCALE = 64.0
MAX_SAMPLES = 32


@dataclass(frozen=True)
class EqualizedPair:
    producer: str  # Conv_a node name
    consumer: str  # Conv_b node name
    depthwise: bool
    median_scale: float


def equalize_activation_ranges(model, calibration_nchw: np.ndarray):
    """Returns (equalized copy of the ONNX model, list of EqualizedPair)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = _GraphIndex(model)
    pairs = [pair for pair in (graph.chain_after(node) for node in model.graph.node if node.op_type == "Conv") if pair]
    if not pairs:
        return model, []
    peaks = _channel_peaks(model, [conv_a.output[0] for conv_a, _, _, _ in pairs], calibration_nchw[:MAX_SAMPLES])
    applied = []
    for (conv_a, clip_top, conv_b, depthwise), peak in zip(pairs, peaks):
        scales = _scales(peak, clip_top, depthwise)
        if np.allclose(scales, 1.0):
            continue
        graph.scale_output_channels(conv_a, scales)
        graph.scale_input_channels(conv_b, 1.0 / scales, depthwise)
        applied.append(EqualizedPair(conv_a.name, conv_b.name, depthwise, float(np.median(scales))))
    applied += _equalize_residual_streams(model, graph, calibration_nchw[:MAX_SAMPLES])
    return model, applied


def _equalize_residual_streams(model, graph: "_GraphIndex", samples: np.ndarray) -> list[EqualizedPair]:
    """Linear bottlenecks: tensors joined by Add nodes form one stream that 1x1 convolutions write and read.
    Scaling every channel of the whole stream (writers' outputs by d, readers' inputs by 1/d) is exact."""
    streams = graph.linear_streams()
    if not streams:
        return []
    peaks = _channel_peaks(model, [tensors[0] for tensors, _, _ in streams], samples, absolute=True)
    applied = []
    for (tensors, writers, readers), peak in zip(streams, peaks):
        target = float(peak.max())
        scales = np.sqrt(np.clip(target / np.maximum(peak, target / MAX_SCALE), 1.0, MAX_SCALE))
        for writer in writers:
            graph.scale_output_channels(writer, scales)
        for reader in readers:
            graph.scale_input_channels(reader, 1.0 / scales, depthwise=False)
        applied.append(EqualizedPair(writers[0].name, readers[0].name, False, float(np.median(scales))))
    return applied


def _scales(peak: np.ndarray, clip_top: float, depthwise: bool) -> np.ndarray:
    target = clip_top * HEADROOM if np.isfinite(clip_top) else float(peak.max())
    positive = np.maximum(peak, target / MAX_SCALE)
    scales = np.clip(target / positive, 1.0, MAX_SCALE)
    return scales if depthwise else np.sqrt(scales)


def _channel_peaks(model, tensor_names: list[str], samples: np.ndarray, absolute: bool = False) -> list[np.ndarray]:
    """The largest value (or magnitude) each channel of each named tensor reaches over the samples."""
    peaks = [None] * len(tensor_names)
    for values in inner_tensors(model, tensor_names, samples):
        for index, name in enumerate(tensor_names):
            result = np.abs(values[name]) if absolute else values[name]
            channel_max = result.max(axis=(0, 2, 3)) if result.ndim == 4 else result.max(axis=0)
            peaks[index] = channel_max if peaks[index] is None else np.maximum(peaks[index], channel_max)
    return peaks


class _GraphIndex(OnnxView):
    """The graph view with equalization's questions about it, and its in-place weight edits."""

    def chain_after(self, conv_a):
        """(Conv_a, clip top, Conv_b, depthwise) when Conv_a → ReLU/ReLU6 → Conv_b is a private chain."""
        if len(conv_a.input) < 3 or not self._private_weights(conv_a):
            return None
        activation = self.only_consumer(conv_a.output[0])
        if activation is None or activation.op_type not in ("Relu", "Clip"):
            return None
        clip_top = self._clip_top(activation)
        if clip_top is None:
            return None
        conv_b = self.only_consumer(activation.output[0])
        if conv_b is None or conv_b.op_type != "Conv" or conv_b.input[0] != activation.output[0]:
            return None
        if not self._private_weights(conv_b, need_bias=False):
            return None
        channels = self.array(conv_a.input[1]).shape[0]
        weights_b = self.array(conv_b.input[1])
        group = conv_group(conv_b)
        depthwise = group == channels and weights_b.shape[1] == 1 and weights_b.shape[0] == channels
        if not depthwise and (group != 1 or weights_b.shape[1] != channels):
            return None
        return conv_a, clip_top, conv_b, depthwise

    def linear_streams(self) -> list[tuple[list[str], list, list]]:
        """Groups of tensors joined by Add, written only by 1x1/any Convs with private weights and read
        only by Adds and group-1 Convs: (tensors, writer convs, reader convs)."""
        seen: set[str] = set()
        streams = []
        for node in self.model.graph.node:
            if node.op_type != "Add" or node.output[0] in seen:
                continue
            stream = self._collect_stream(node.output[0])
            seen.update(stream[0] if stream else [node.output[0]])
            if stream:
                streams.append(stream)
        return streams

    def _collect_stream(self, start: str):
        tensors, writers, readers, pending = [], [], [], [start]
        while pending:
            tensor = pending.pop()
            if tensor in tensors:
                continue
            tensors.append(tensor)
            producer = self.producers.get(tensor)
            if producer is None or tensor in self.graph_outputs:
                return None
            if producer.op_type == "Add":
                if any(name in self.constants for name in producer.input):
                    return None
                pending += list(producer.input)
            elif producer.op_type == "Conv" and len(producer.input) == 3 and self._private_weights(producer):
                writers.append(producer) if producer not in writers else None
            else:
                return None
            for consumer in self.consumers.get(tensor, []):
                if consumer.op_type == "Add":
                    pending.append(consumer.output[0])
                elif consumer.op_type == "Conv" and consumer.input[0] == tensor and self._plain_reader(consumer):
                    readers.append(consumer) if consumer not in readers else None
                else:
                    return None
        return (tensors, writers, readers) if writers and readers else None

    def _plain_reader(self, conv) -> bool:
        group = conv_group(conv)
        return group == 1 and self._private_weights(conv, need_bias=False)

    def _private_weights(self, conv, need_bias: bool = True) -> bool:
        names = conv.input[1:3] if need_bias else conv.input[1:2]
        return all(name in self.initializers and len(self.consumers.get(name, [])) == 1 for name in names)

    def _clip_top(self, activation) -> float | None:
        """inf for ReLU, the upper bound for Clip(0, top); None for anything that is not zero-floored."""
        if activation.op_type == "Relu":
            return float("inf")
        bounds = list(activation.input[1:3]) + [""] * (3 - len(activation.input))
        low = self._scalar(bounds[0]) if bounds[0] else None
        high = self._scalar(bounds[1]) if bounds[1] else float("inf")
        if low != 0.0 or high is None or high <= 0:
            return None
        return high

    def _scalar(self, name: str) -> float | None:
        value = self.constant_value(name)
        return None if value is None else float(value.reshape(-1)[0])

    def scale_output_channels(self, conv, scales: np.ndarray) -> None:
        weights = self.array(conv.input[1])
        self.replace_initializer(conv.input[1], weights * scales.reshape(-1, *([1] * (weights.ndim - 1))))
        self.replace_initializer(conv.input[2], self.array(conv.input[2]) * scales)

    def scale_input_channels(self, conv, scales: np.ndarray, depthwise: bool) -> None:
        weights = self.array(conv.input[1])
        shape = (-1, *([1] * (weights.ndim - 1))) if depthwise else (1, -1, *([1] * (weights.ndim - 2)))
        self.replace_initializer(conv.input[1], weights * scales.reshape(shape))
