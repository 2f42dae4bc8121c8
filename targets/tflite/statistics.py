"""What the int8 recipe measures on the float model, in simulated passes: each activation's range and histogram,
the input statistics (H = E[patch patchᵀ]) weight rounding needs, the model's outputs and its weighted layers'
outputs on chosen samples. All in float64 (targets/tflite/simulator.py), so the figures are the same on any
machine up to ~1e-16 relative."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from targets.tflite.simulator import SAME, Graph, OpInfo, Run, same_padding, simulate

HISTOGRAM_BINS = 2048
# Patch positions H is summed over per sample, at most: every k-th position beyond it (k fixed by the tensor's
# size, so the same positions on any machine and in any batching). A 3x3 depthwise H is 9 x 9 and a 1x1
# convolution's is C x C (C <= 1280 here): 256 positions of each of 32 samples, 8k per layer, estimate them
# well, and the 112 x 112 layers of MobileNetV2 would otherwise cost most of the export's time.
HESSIAN_POSITIONS_PER_SAMPLE = 256

@dataclass
class Statistics:
    """Filled by `measure`: tensor index -> (min, max) / histogram counts / values; weighted op index -> H over
    its input patches, and -> its outputs on the chosen samples."""

    ranges: dict[int, tuple[float, float]] = field(default_factory=dict)
    histograms: dict[int, np.ndarray] = field(default_factory=dict)
    hessians: dict[int, np.ndarray] = field(default_factory=dict)
    values: dict[int, np.ndarray] = field(default_factory=dict)  # kept tensors, every sample
    layer_outputs: dict[int, list[np.ndarray]] = field(default_factory=dict)  # op -> float32 outputs, chosen samples
    samples: int = 0


def activation_tensors(graph: Graph) -> list[int]:
    """The tensors an int8 model quantizes: every float tensor an op writes, the graph input included."""
    written = [index for op in graph.ops for index in op.outputs]
    return [index for index in dict.fromkeys([*graph.inputs, *written]) if graph.tensors[index].type == 0]


def measure(graph: Graph, samples_nhwc: np.ndarray, *, ranges_of=(), histograms_of=None, hessians_of=(),
            hessian_samples=None, keep=(), layer_outputs_of=(), layer_output_samples=()) -> Statistics:
    """One pass over the samples: (min, max) of `ranges_of`; histograms of `histograms_of` ({tensor: (low, high)},
    fixed ranges from an earlier pass); input H of the weighted ops `hessians_of` (op indices) over the samples at
    positions `hessian_samples` (default: all); every sample's value of the tensors in `keep`; and the outputs of
    the ops `layer_outputs_of` on the samples at positions `layer_output_samples`, in that order."""
    statistics = Statistics(samples=len(samples_nhwc))
    ranges_of, hessians_of, layer_outputs_of = set(ranges_of), set(hessians_of), set(layer_outputs_of)
    histograms_of = histograms_of or {}
    hessian_positions = np.arange(len(samples_nhwc)) if hessian_samples is None else np.asarray(hessian_samples)
    chosen = {position: order for order, position in enumerate(layer_output_samples)}
    collected: dict[int, dict[int, np.ndarray]] = {op: {} for op in layer_outputs_of}
    if graph.inputs[0] in ranges_of or graph.inputs[0] in histograms_of:
        _record_input(statistics, samples_nhwc, graph.inputs[0], ranges_of, histograms_of)

    def after_op(run: Run, op: OpInfo) -> None:
        for index in op.outputs:
            if index in ranges_of:
                _update_range(statistics, index, run.values[index])
            if index in histograms_of:
                _update_histogram(statistics, index, run.values[index], histograms_of[index])
        if op.index in hessians_of:
            rows = hessian_positions[(hessian_positions >= run.first_sample)
                                     & (hessian_positions < run.first_sample + run.samples)] - run.first_sample
            if len(rows):
                update = input_hessian(run, op, rows=rows)
                previous = statistics.hessians.get(op.index)
                statistics.hessians[op.index] = update if previous is None else previous + update
        if op.index in layer_outputs_of:
            value = run.real(op.outputs[0])
            for offset in range(len(value)):
                if run.first_sample + offset in chosen:
                    collected[op.index][chosen[run.first_sample + offset]] = value[offset].numpy().astype(np.float32)

    statistics.values = simulate(graph, samples_nhwc, keep=keep, after_op=after_op)
    statistics.layer_outputs = {op: [outputs[order] for order in sorted(outputs)] for op, outputs in collected.items()}
    return statistics


def _record_input(statistics, samples_nhwc, index, ranges_of, histograms_of) -> None:
    import torch

    value = torch.from_numpy(np.asarray(samples_nhwc, np.float64))
    if index in ranges_of:
        _update_range(statistics, index, value)
    if index in histograms_of:
        _update_histogram(statistics, index, value, histograms_of[index])


def _update_range(statistics: Statistics, index: int, value) -> None:
    low, high = float(value.min()), float(value.max())
    previous = statistics.ranges.get(index)
    statistics.ranges[index] = (low, high) if previous is None else (min(previous[0], low), max(previous[1], high))


def _update_histogram(statistics: Statistics, index: int, value, span: tuple[float, float]) -> None:
    """Values beyond the span count in its edge bins (the span is set before the values are all seen)."""
    import torch

    low, high = span
    clamped = value.reshape(-1).clamp(low, high)
    counts = torch.histc(clamped, bins=HISTOGRAM_BINS, min=low, max=high).numpy().astype(np.int64)
    previous = statistics.histograms.get(index)
    statistics.histograms[index] = counts if previous is None else previous + counts


def input_hessian(run: Run, op: OpInfo, rows=None) -> np.ndarray:
    """Σ patch patchᵀ over every position the op's kernel visits, in its weights' element order: one matrix
    (kh·kw·C_in)² for a convolution (patch order H, W, C as in OHWI weights), one (kh·kw)² per channel for a
    depthwise convolution (C x taps x taps)."""
    import torch

    taps = _kernel_taps(run, op)  # N x Ho x Wo x C windows, row-major over the kernel
    if rows is not None:
        taps = [tap[rows] for tap in taps]
    # Every sample alone picks its positions, so H does not depend on how the samples were batched.
    samples, positions = taps[0].shape[0], taps[0].shape[1] * taps[0].shape[2]
    every = -(-positions // HESSIAN_POSITIONS_PER_SAMPLE)
    rows = [tap.reshape(samples, positions, -1)[:, ::every].reshape(-1, tap.shape[-1])
            for tap in taps]  # M x C each, the same M positions
    if op.kind == "DEPTHWISE_CONV_2D":
        stacked = torch.stack(rows, dim=1)  # M x taps x C
        return torch.einsum("mic,mjc->cij", stacked, stacked).numpy()
    patches = torch.cat(rows, dim=1)  # M x (taps * C)
    return (patches.T @ patches).numpy()


def _kernel_taps(run: Run, op: OpInfo) -> list:
    """The op's input as the kernel sees it, one shifted window per kernel tap (after its own padding)."""
    import torch.nn.functional as F

    x = run.real(op.inputs[0])
    weights = run.graph.tensors[op.inputs[1]].shape  # OHWI or 1HWC
    kernel_h, kernel_w = weights[1], weights[2]
    options = op.options
    stride = (getattr(options, "strideH", 1), getattr(options, "strideW", 1))
    dilation = (getattr(options, "dilationHFactor", 1) or 1, getattr(options, "dilationWFactor", 1) or 1)
    if getattr(options, "padding", SAME) == SAME:
        top, bottom = same_padding(x.shape[1], kernel_h, stride[0], dilation[0])
        left, right = same_padding(x.shape[2], kernel_w, stride[1], dilation[1])
        x = F.pad(x, (0, 0, left, right, top, bottom))
    out_h = (x.shape[1] - (kernel_h - 1) * dilation[0] - 1) // stride[0] + 1
    out_w = (x.shape[2] - (kernel_w - 1) * dilation[1] - 1) // stride[1] + 1
    return [x[:, row * dilation[0]: row * dilation[0] + (out_h - 1) * stride[0] + 1: stride[0],
              column * dilation[1]: column * dilation[1] + (out_w - 1) * stride[1] + 1: stride[1], :]
            for row in range(kernel_h) for column in range(kernel_w)]
