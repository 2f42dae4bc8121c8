"""Hessian-aware weight rounding: an ONNX → ONNX pass that puts every convolution's weights on the int8 grid.

Rounding each weight to its nearest int8 level is not the best int8 layer: the errors of neighbouring
weights add up on the same inputs. On torchvision's MobileNetV2, nearest rounding of the weights alone
(float activations) moves the logits by 0.28 standard deviations and flips 12 % of the top-1 answers.

For each convolution we measure H = E[x xᵀ] of the patches it reads on the calibration photos and round
one input column at a time, spreading each column's rounding error over the columns not yet rounded so
the layer output changes least (optimal brain quantization as in GPTQ, Frantar et al. 2022). The result
is written back as float weights that lie exactly on the grid TFLite's converter uses for per-channel
symmetric int8 (scale = max|w| / 127 per output channel), so its own rounding reproduces our choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph.onnx_run import inner_tensors
from graph.onnx_view import OnnxView, conv_group

LEVELS = 127  # symmetric int8 weights, narrow range, as TFLite quantizes them
DAMPING = 0.01  # fraction of the mean diagonal added to H: keeps the inverse stable on few samples
MAX_SAMPLES = 64


@dataclass(frozen=True)
class RoundedLayer:
    conv: str
    depthwise: bool
    columns: int


def round_weights_to_int8_grid(model, calibration_nchw: np.ndarray):
    """Returns (copy of the ONNX model with grid-aligned Conv weights, list of RoundedLayer)."""
    import onnx

    model = onnx.ModelProto.FromString(model.SerializeToString())
    view = OnnxView(model)
    initializers = view.initializers
    convs = [
        node for node in model.graph.node
        if node.op_type == "Conv" and node.input[1] in initializers and view.use_count(node.input[1]) == 1
    ]
    if not convs:
        return model, []
    hessians = _patch_hessians(model, convs, calibration_nchw[:MAX_SAMPLES])
    rounded = []
    for conv, hessian in zip(convs, hessians):
        weights = view.array(conv.input[1]).astype(np.float64)
        depthwise = conv_group(conv) > 1
        if depthwise and weights.shape[1] != 1:
            continue  # grouped (not depthwise) convolutions keep nearest rounding
        grid_weights = _round_depthwise(weights, hessian) if depthwise else _round_dense(weights, hessian)
        view.replace_initializer(conv.input[1], grid_weights)
        rounded.append(RoundedLayer(conv.name, depthwise, int(np.prod(weights.shape[1:]))))
    return model, rounded


def channel_scales(weights: np.ndarray) -> np.ndarray:
    """TFLite's per-output-channel scale, shaped to broadcast against `weights`."""
    peak = np.abs(weights).reshape(len(weights), -1).max(axis=1)
    scales = np.where(peak > 0, peak / LEVELS, 1.0)
    return scales.reshape(-1, *([1] * (weights.ndim - 1)))


def _round_dense(weights: np.ndarray, hessian: np.ndarray) -> np.ndarray:
    """weights: out x in x kh x kw; hessian: (in*kh*kw)² over the layer's input patches."""
    scales = channel_scales(weights)
    columns = weights.reshape(len(weights), -1) / scales.reshape(-1, 1)  # in units of one int8 step
    levels = _gptq(columns[None], hessian[None])[0]
    return _keep_channel_peaks(levels, weights.reshape(len(weights), -1) / scales.reshape(-1, 1)).reshape(
        weights.shape
    ) * scales


def _round_depthwise(weights: np.ndarray, hessians: np.ndarray) -> np.ndarray:
    """weights: C x 1 x kh x kw; hessians: C x (kh*kw)², one per channel (channels never mix)."""
    scales = channel_scales(weights)
    taps = weights.reshape(len(weights), 1, -1) / scales.reshape(-1, 1, 1)
    levels = _gptq(taps, hessians)[:, 0, :]
    return _keep_channel_peaks(levels, taps[:, 0, :]).reshape(weights.shape) * scales


def _gptq(columns: np.ndarray, hessians: np.ndarray) -> np.ndarray:
    """Batched optimal-brain rounding. columns: B x rows x cols (in steps), hessians: B x cols x cols."""
    batch, _, width = columns.shape
    work = columns.copy()
    levels = np.zeros_like(work)
    damped = hessians + DAMPING * np.einsum("bii->b", hessians)[:, None, None] / width * np.eye(width)
    dead = np.einsum("bii->bi", hessians) <= 0
    damped[dead[:, :, None] & np.eye(width, dtype=bool)[None]] = 1.0
    # Upper Cholesky factor of H⁻¹: row i holds how the not-yet-rounded columns absorb column i's error.
    inverse_factor = np.linalg.cholesky(np.linalg.inv(damped)).transpose(0, 2, 1)
    for column in range(width):
        chosen = np.clip(np.round(work[:, :, column]), -LEVELS, LEVELS)
        levels[:, :, column] = chosen
        pivot = inverse_factor[:, column, column][:, None]
        error = (work[:, :, column] - chosen) / pivot
        work[:, :, column + 1 :] -= error[:, :, None] * inverse_factor[:, None, column, column + 1 :]
    return levels


def _keep_channel_peaks(levels: np.ndarray, original_steps: np.ndarray) -> np.ndarray:
    """Each channel's largest weight must stay at ±127: TFLite derives the scale from it."""
    peak_at = np.abs(original_steps).argmax(axis=1)
    rows = np.arange(len(levels))
    levels = levels.copy()
    levels[rows, peak_at] = np.sign(original_steps[rows, peak_at]) * LEVELS
    return levels


def _conv_geometry(conv, kernel: tuple[int, int]) -> dict:
    attributes = {a.name: list(a.ints) for a in conv.attribute if a.ints}
    pads = attributes.get("pads", [0, 0, 0, 0])
    return {
        "kernel": kernel,
        "stride": tuple(attributes.get("strides", [1, 1])),
        "dilation": tuple(attributes.get("dilations", [1, 1])),
        "pads": (pads[1], pads[3], pads[0], pads[2]),  # torch's F.pad order: left, right, top, bottom
    }


def _patch_hessians(model, convs, samples: np.ndarray) -> list[np.ndarray]:
    """For every conv: sum over calibration patches of patch patchᵀ (per channel for depthwise)."""
    import torch

    view = OnnxView(model)
    names = list(dict.fromkeys(conv.input[0] for conv in convs))
    shapes = [view.array(conv.input[1]).shape for conv in convs]
    geometries = [_conv_geometry(conv, shape[2:]) for conv, shape in zip(convs, shapes)]
    sums: list[np.ndarray | None] = [None] * len(convs)
    for tensors in inner_tensors(model, names, samples):
        for index, (conv, geometry) in enumerate(zip(convs, geometries)):
            patches = _patches(torch.from_numpy(tensors[conv.input[0]]), geometry)  # N x C x K x L
            if conv_group(conv) > 1:
                update = torch.einsum("nckl,ncjl->ckj", patches, patches)
            else:
                flat = patches.reshape(patches.shape[0], -1, patches.shape[-1])
                update = torch.einsum("nkl,njl->kj", flat, flat)
            update = update.double().numpy()
            sums[index] = update if sums[index] is None else sums[index] + update
    return sums


def _patches(inputs, geometry: dict):
    import torch.nn.functional as F

    padded = F.pad(inputs, geometry["pads"])
    unfolded = F.unfold(padded, geometry["kernel"], dilation=geometry["dilation"], stride=geometry["stride"])
    channels = inputs.shape[1]
    return unfolded.reshape(inputs.shape[0], channels, -1, unfolded.shape[-1]).double()
