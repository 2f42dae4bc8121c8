"""Hessian-aware weight rounding of the float .tflite: every convolution's weights put on the int8 grid.

Rounding each weight to its nearest int8 level is not the best int8 layer: the errors of neighbouring weights
add up on the same inputs. For each convolution we take H = Σ patch patchᵀ over the calibration photos
(targets/tflite/statistics.py) and round one input column at a time, spreading each column's rounding error
over the columns not yet rounded so the layer output changes least (optimal brain quantization as in GPTQ,
Frantar et al. 2022). The weights are written back as float32 values that lie exactly on the grid TFLite's
quantizer uses for per-channel symmetric int8 (scale = max|w| / 127 per output channel), so its own rounding
reproduces our choice.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from targets.tflite.model_edit import EditableModel
from targets.tflite.simulator import OpInfo

LEVELS = 127  # symmetric int8 weights, narrow range, as TFLite quantizes them
DAMPING = 0.01  # fraction of the mean diagonal added to H: keeps the inverse stable on few samples
ROUNDED_KINDS = ("CONV_2D", "DEPTHWISE_CONV_2D")


@dataclass(frozen=True)
class RoundedLayer:
    weights: str  # the weight tensor's name
    depthwise: bool
    columns: int


def roundable_ops(model: EditableModel) -> list[OpInfo]:
    """Convolutions whose float32 weights only they read (depthwise ones without a channel multiplier, full
    ones without groups)."""
    found = []
    for op in model.graph.ops:
        if op.kind not in ROUNDED_KINDS or not model.private(op, 1) or model.graph.tensors[op.inputs[1]].type != 0:
            continue
        # A depthwise one with a channel multiplier, or a grouped CONV_2D: their patches are not one H.
        if model.graph.tensors[op.inputs[1]].shape[-1] != model.graph.tensors[op.inputs[0]].shape[-1]:
            continue
        found.append(op)
    return found


def round_weights(model: EditableModel, hessians: dict[int, np.ndarray]) -> list[RoundedLayer]:
    """Write grid-aligned weights into `model` for every op in `hessians` (op index -> H)."""
    rounded = []
    for op in model.graph.ops:
        if op.index not in hessians:
            continue
        weights = model.constant(op.inputs[1])
        if op.kind == "DEPTHWISE_CONV_2D":  # 1 x H x W x C: channels never mix, one H per channel
            per_channel = weights.reshape(-1, weights.shape[-1]).T.astype(np.float64)  # C x taps
            grid = _round_rows(per_channel[:, None, :], hessians[op.index])[:, 0, :]
            weights[...] = grid.T.reshape(weights.shape).astype(np.float32)
            columns = per_channel.shape[1]
        else:  # O x H x W x I, rows are output channels, columns (H, W, I) as the patches are ordered
            rows = weights.reshape(len(weights), -1).astype(np.float64)
            grid = _round_rows(rows[None], hessians[op.index][None])[0]
            weights[...] = grid.reshape(weights.shape).astype(np.float32)
            columns = rows.shape[1]
        rounded.append(RoundedLayer(model.graph.tensors[op.inputs[1]].name, op.kind == "DEPTHWISE_CONV_2D", columns))
    return rounded


def channel_scales(rows: np.ndarray) -> np.ndarray:
    """TFLite's per-output-channel scale of weights laid out as B x rows x columns: max|w| / 127, in float32."""
    peak = np.abs(rows).max(axis=-1).astype(np.float32)
    return np.where(peak > 0, peak / np.float32(LEVELS), np.float32(1.0)).astype(np.float32)


def _round_rows(rows: np.ndarray, hessians: np.ndarray) -> np.ndarray:
    """rows: B x R x C weights (float64), hessians: B x C x C. Returns the grid weights (float64 values that
    are exactly level x float32 scale)."""
    scales = channel_scales(rows)  # B x R
    steps = rows / scales[..., None].astype(np.float64)
    levels = _keep_channel_peaks(_gptq(steps, hessians), steps)
    return levels * scales[..., None].astype(np.float64)


def _gptq(columns: np.ndarray, hessians: np.ndarray) -> np.ndarray:
    """Batched optimal-brain rounding. columns: B x rows x cols (in steps), hessians: B x cols x cols."""
    batch, _, width = columns.shape
    work = columns.copy()
    levels = np.zeros_like(work)
    damped = hessians + DAMPING * np.einsum("bii->b", hessians)[:, None, None] / width * np.eye(width)
    dead = np.einsum("bii->bi", hessians) <= 0
    damped[dead[:, :, None] & np.eye(width, dtype=bool)[None]] = 1.0
    inverse_factor = _inverse_factor(damped)
    for column in range(width):
        chosen = np.clip(np.round(work[:, :, column]), -LEVELS, LEVELS)
        levels[:, :, column] = chosen
        pivot = inverse_factor[:, column, column][:, None]
        error = (work[:, :, column] - chosen) / pivot
        work[:, :, column + 1:] -= error[:, :, None] * inverse_factor[:, None, column, column + 1:]
    return levels


def _inverse_factor(hessians: np.ndarray) -> np.ndarray:
    """Upper Cholesky factor of H⁻¹: row i holds how the not-yet-rounded columns absorb column i's error.
    In torch: its thread pool is the one the recipe sizes (numpy's BLAS spins up a thread per core and, on a
    busy machine, spent minutes waiting in them for what takes a second)."""
    import torch

    matrices = torch.from_numpy(hessians)
    return torch.linalg.cholesky(torch.linalg.inv(matrices)).transpose(1, 2).contiguous().numpy()


def _keep_channel_peaks(levels: np.ndarray, original_steps: np.ndarray) -> np.ndarray:
    """Each channel's largest weight must stay at ±127: TFLite derives the scale from it."""
    peak_at = np.abs(original_steps).argmax(axis=-1)
    levels = levels.copy()
    batch, rows = np.meshgrid(np.arange(levels.shape[0]), np.arange(levels.shape[1]), indexing="ij")
    levels[batch, rows, peak_at] = np.sign(original_steps[batch, rows, peak_at]) * LEVELS
    return levels
