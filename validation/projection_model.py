"""The latency cost model shared by every device: per-layer costs learned across the devices of the data, and a
device described by a few weights on them.

A network's work is a vector of features (FEATURES): multiply-adds split by how ncnn computes them, bytes moved
and a count of kernel launches. A device's latency is `weights . (basis @ features)`: the basis holds `rank` rows
of non-negative per-feature costs (think "compute-bound", "memory-bound", "int8 kernels"), learned jointly on all
published (device, network) latencies; each device setting has `rank` non-negative weights. So a device that
is not in the data needs only a handful of its own measurements to be placed, and a device that is uses all of
them. Fitted to minimize the squared relative error, as the median error measures it.

Why these features (each kept because it lowered the error under leave-one-device-out, bench/projection_error.py):
- ncnn packs channels in fours (eight with fp16): a convolution whose channel counts are not multiples of 4
  falls back to slower unpacked kernels ("unpacked MACs"; SSD and YOLO heads with 84 or 126 outputs).
- a grouped convolution (RegNet, ShuffleNet v1) runs as one small convolution per group: each group counts as
  a layer (a kernel launch and a thread synchronisation).
Tried and not kept (no gain held out): splitting MACs or activation bytes by per-layer size (cache), a separate
transcendental-activation feature, int8 MACs split by kernel, a free per-device int8 weight.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from graph.cost import KINDS, GraphCost, LayerCost

MAC_KINDS = tuple(kind for kind in KINDS if kind != "other")
PACKED_KINDS = ("conv", "winograd", "pointwise")  # dense convolutions, whose kernels ncnn picks by channel packing
CHANNEL_PACK = 4
FEATURES = (*(f"{kind} MACs" for kind in MAC_KINDS), "unpacked MACs", "int8 MACs", "weight bytes",
            "activation bytes", "layers", "int8 layers")
DEFAULT_RANK = 3  # chosen by leave-one-device-out error: 2 is worse, 4 no better with a handful of measurements
_MAX_ITERATIONS = 100
_TOLERANCE = 1e-7


def cost_features(cost: GraphCost) -> np.ndarray:
    """The feature vector (FEATURES order) of one graph. Pure."""
    values = dict.fromkeys(FEATURES, 0.0)
    for layer in cost.layers:
        is_int8 = layer.precision == "int8"
        if layer.kind in MAC_KINDS:
            values[_mac_feature(layer, is_int8)] += layer.macs
        values["weight bytes"] += layer.weight_bytes
        values["activation bytes"] += layer.activation_bytes
        values["int8 layers" if is_int8 else "layers"] += _launches(layer)
    return np.array([values[name] for name in FEATURES])


def _mac_feature(layer: LayerCost, is_int8: bool) -> str:
    if is_int8:
        return "int8 MACs"
    if layer.kind in PACKED_KINDS and (layer.in_channels % CHANNEL_PACK or layer.out_channels % CHANNEL_PACK):
        return "unpacked MACs"
    return f"{layer.kind} MACs"


def _launches(layer: LayerCost) -> int:
    grouped = 1 < layer.groups < layer.in_channels  # depthwise (groups == channels) is one kernel
    return layer.groups if grouped else 1


# ---------------------------------------------------------------------------------------------- the basis

@dataclass(frozen=True)
class CostBasis:
    """`rank` rows of non-negative per-feature costs, each row in ms per (feature / column_scale)."""

    rows: tuple[tuple[float, ...], ...]
    column_scale: tuple[float, ...]  # features are divided by these (the largest value in the data) before use

    @property
    def rank(self) -> int:
        return len(self.rows)

    def components(self, features: np.ndarray) -> np.ndarray:
        """Milliseconds of each basis row for one feature vector (shape (F,)) or many (shape (N, F))."""
        return (np.asarray(features) / np.asarray(self.column_scale)) @ np.asarray(self.rows).T


def column_scale(features: np.ndarray) -> np.ndarray:
    largest = features.max(axis=0)
    return np.where(largest > 0, largest, 1.0)


def fit_basis(features: np.ndarray, latency_ms: np.ndarray, configurations: np.ndarray, rank: int = DEFAULT_RANK,
              start: CostBasis | None = None, max_iterations: int = _MAX_ITERATIONS) -> CostBasis:
    """Alternating non-negative least squares over the latencies of `configurations` (row indices of
    `latency_ms`, a configurations x networks table with NaN where nothing was measured). `start` (a basis of the
    same features) makes refits after holding something out converge in a few rounds."""
    scale = column_scale(features)
    scaled = features / scale
    observed = ~np.isnan(latency_ms[configurations])
    measured = np.where(observed, latency_ms[configurations], 1.0)
    basis = np.asarray(start.rows) if start is not None else _initial_basis(scaled, measured, observed, rank)
    # Per configuration, the normal equations of its measurements (relative errors): what the basis step needs.
    relative = np.where(observed[:, :, None], scaled[None, :, :], 0.0) / measured[:, :, None]
    gram_per_row = np.einsum("cnk,cnl->ckl", relative, relative)
    target_per_row = relative.sum(axis=1)
    previous = np.inf
    for _ in range(max_iterations):
        weights = _fit_all_weights(scaled @ basis.T, measured, observed)
        basis = _normalized(_fit_rows(gram_per_row, target_per_row, weights))
        weights = _fit_all_weights(scaled @ basis.T, measured, observed)
        predicted = weights @ (scaled @ basis.T).T
        loss = float(np.mean((predicted[observed] / measured[observed] - 1.0) ** 2))
        if previous - loss < _TOLERANCE * previous:
            break
        previous = loss
    return CostBasis(tuple(map(tuple, basis.tolist())), tuple(scale.tolist()))


def fit_weights(components: np.ndarray, measured_ms: np.ndarray) -> np.ndarray:
    """A device's non-negative weights on the basis rows from its measurements (components: N x rank)."""
    return relative_nnls(np.asarray(components, float), np.asarray(measured_ms, float))


def relative_nnls(design: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimizing the sum of squared relative errors (prediction / measured - 1)."""
    from scipy.optimize import nnls

    relative = design / measured[:, None]
    scale = relative.max(axis=0)
    scale[scale <= 0] = 1.0  # a column no measurement exercises gets coefficient 0
    coefficients, _ = nnls(relative / scale, np.ones(len(measured)), maxiter=50 * design.shape[1] + 500)
    return coefficients / scale


def _fit_all_weights(components: np.ndarray, measured: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Every configuration's weights at once: each is a non-negative least squares in `rank` unknowns, solved
    exactly by trying every subset of active unknowns (7 for rank 3) on the normal equations of all rows together
    (a loop of per-row solver calls dominated the refits the validation makes)."""
    inverse = np.where(observed, 1.0 / measured, 0.0)
    rank = components.shape[1]
    # One matrix product over the outer products of the components (a three-operand einsum loops naively).
    outer = (components[:, :, None] * components[:, None, :]).reshape(len(components), rank * rank)
    gram = ((inverse ** 2) @ outer).reshape(len(inverse), rank, rank)
    target = inverse @ components
    scale = np.sqrt(np.clip(np.einsum("crr->cr", gram), 1e-300, None))
    gram = gram / (scale[:, :, None] * scale[:, None, :])
    target = target / scale
    # Every subset's system at once: unknowns outside the subset get an identity row and a zero target.
    active = np.array([[(subset >> bit) & 1 for bit in range(rank)] for subset in range(1, 2 ** rank)], dtype=bool)
    both = active[:, None, :, None] & active[:, None, None, :]
    inactive_diagonal = np.eye(rank) * ~active[:, None, :, None]
    systems = np.where(both, gram[None], 0.0) + 1e-12 * np.eye(rank) * active[:, None, :, None] + inactive_diagonal
    solutions = np.linalg.solve(systems, np.where(active[:, None, :], target[None], 0.0)[..., None])[..., 0]
    objectives = ((gram[None] @ solutions[..., None])[..., 0] * solutions).sum(axis=-1) \
        - 2 * (target[None] * solutions).sum(axis=-1)
    objectives = np.where((solutions >= 0).all(axis=-1), objectives, np.inf)
    # w = 0 is always feasible, with objective 0; the first subset reaching the lowest objective wins.
    candidates = np.concatenate([np.zeros_like(target)[None], solutions])
    lowest = np.argmin(np.concatenate([np.zeros((1, len(target))), objectives]), axis=0)
    best = candidates[lowest, np.arange(len(target))]
    return best / scale


def _fit_rows(gram_per_row: np.ndarray, target_per_row: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The basis given every configuration's weights: one non-negative least squares in rank x F unknowns. Its
    normal equations are sums over configurations of (weights weights^T) (x) (that configuration's normal
    equations), so thousands of measurements cost no more than a few dozen unknowns."""
    rank, size = weights.shape[1], gram_per_row.shape[1]
    pair_weights = (weights[:, :, None] * weights[:, None, :]).reshape(len(weights), rank * rank)
    summed = (pair_weights.T @ gram_per_row.reshape(len(weights), size * size)).reshape(rank, rank, size, size)
    gram = summed.transpose(0, 2, 1, 3).reshape(rank * size, rank * size)
    target = np.einsum("cr,ck->rk", weights, target_per_row).reshape(rank * size)
    return _nnls_normal_equations(gram, target).reshape(rank, size)


def _nnls_normal_equations(gram: np.ndarray, target: np.ndarray) -> np.ndarray:
    from scipy.linalg import solve_triangular
    from scipy.optimize import nnls

    solution = np.zeros(len(target))
    diagonal = np.diag(gram)
    live = diagonal > 1e-12 * max(float(diagonal.max()), 1e-300)  # unknowns no measurement touches stay 0
    if not live.any():
        return solution
    gram, target = gram[np.ix_(live, live)], target[live]
    scale = np.sqrt(np.diag(gram))
    lower = np.linalg.cholesky(gram / np.outer(scale, scale) + 1e-10 * np.eye(len(target)))
    reduced = solve_triangular(lower, target / scale, lower=True)
    coefficients, _ = nnls(lower.T, reduced, maxiter=50 * len(target) + 500)
    solution[live] = coefficients / scale
    return solution


def _normalized(basis: np.ndarray) -> np.ndarray:
    """Rows summing to 1: the weights carry the scale, so a refit starts where the last one ended."""
    sums = basis.sum(axis=1, keepdims=True)
    return basis / np.where(sums > 0, sums, 1.0)


def _initial_basis(scaled: np.ndarray, measured: np.ndarray, observed: np.ndarray, rank: int) -> np.ndarray:
    """`rank` mutually distant per-configuration cost vectors: the most typical one, then each next the farthest
    from those already picked. Deterministic, so every fit of the same data gives the same basis."""
    per_configuration = []
    for row in range(measured.shape[0]):
        seen = observed[row]
        if seen.sum() >= scaled.shape[1]:
            coefficients = relative_nnls(scaled[seen], measured[row, seen])
            per_configuration.append(coefficients / max(coefficients.sum(), 1e-300))
    candidates = np.array(per_configuration)
    standardized = candidates / (candidates.std(axis=0) + 1e-12)
    picked = [int(np.argmin(((standardized - np.median(standardized, axis=0)) ** 2).sum(axis=1)))]
    while len(picked) < rank:
        distance = np.min([((standardized - standardized[p]) ** 2).sum(axis=1) for p in picked], axis=0)
        picked.append(int(np.argmax(distance)))
    return candidates[picked]
