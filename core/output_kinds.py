"""What an output means, so parity can judge it by what matters to the app: the class a classifier picks, the
class of every pixel of a segmenter, where a keypoint heatmap peaks, how well a box still covers its object.

A kind is inferred where the shape leaves no doubt (N x classes: logits) and otherwise given per output in the
config (`[outputs.NAME] kind = "class_map"`); every output, whatever its kind, also gets cosine and SNR.
"""
from __future__ import annotations

import numpy as np

from core.errors import InputError

LOGITS, CLASS_MAP, HEATMAP, BOXES, TENSOR = "logits", "class_map", "heatmap", "boxes", "tensor"

# kind -> (what it is, what its shape must be) for the messages and the README.
KINDS = {
    LOGITS: "one score per class (N x classes): top-1 agreement and top-5 overlap",
    CLASS_MAP: "per-pixel class scores (N x classes x H x W): pixel agreement and mean IoU of the argmax masks",
    HEATMAP: "one heatmap per keypoint (N x keypoints x H x W): agreement of the peak locations (within 1 cell)",
    BOXES: "boxes as x1, y1, x2, y2 on the last axis (N x ... x 4): mean IoU with the reference's and the error",
    TENSOR: "any tensor: cosine and SNR only",
}


# The figure of each kind its gate reads; a ParityThresholds field of the same name holds the gate.
GATED_FIGURE = {LOGITS: "top1_agreement", CLASS_MAP: "pixel_agreement", HEATMAP: "peak_agreement", BOXES: "box_iou"}
# The gated figures that are a measure per sample (figure_per_sample), not one yes or no per sample as top-1 is.
PER_SAMPLE_FIGURE = {kind: figure for kind, figure in GATED_FIGURE.items() if kind != LOGITS}


def inferred_kind(shape: tuple[int, ...]) -> str:
    return LOGITS if len(shape) == 2 and shape[1] >= 2 else TENSOR


def resolve_kinds(outputs: dict[str, tuple[int, ...]], given: dict[str, str]) -> dict[str, str]:
    """{output: kind} for every output of the model: the config's where it names one, else inferred. A name the
    model does not have, an unknown kind or a kind the shape cannot have is an input error."""
    unknown = sorted(set(given) - set(outputs))
    if unknown:
        raise InputError(f"[outputs.{unknown[0]}] names no output of the model; it has {', '.join(outputs)}",
                         hint="use the output names the manifest lists under outputs")
    kinds = {}
    for name, shape in outputs.items():
        kind = given.get(name, inferred_kind(shape))
        if kind not in KINDS:
            raise InputError(f"[outputs.{name}] kind {kind!r} is not a known kind",
                             hint="one of: " + "; ".join(f"{k} = {what}" for k, what in KINDS.items()))
        problem = _shape_problem(kind, shape)
        if problem:
            raise InputError(f"output {name!r} has shape {list(shape)}, which a {kind} cannot have: {problem}",
                             hint=f"{kind} is {KINDS[kind]}; give the output's real kind, or tensor")
        kinds[name] = kind
    return kinds


def _shape_problem(kind: str, shape: tuple[int, ...]) -> str | None:
    if kind == LOGITS and not (len(shape) == 2 and shape[1] >= 2):
        return "logits are N x classes with 2 classes or more"
    if kind in (CLASS_MAP, HEATMAP) and len(shape) != 4:
        return "it must be N x channels x H x W"
    if kind == CLASS_MAP and shape[1] < 2:
        return "a class map needs 2 classes or more on axis 1"
    if kind == BOXES and (len(shape) < 2 or shape[-1] != 4):
        return "boxes have 4 coordinates on the last axis"
    return None


def kind_metrics(kind: str, reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """The kind's own figures (logits' top-1 is computed with its changes in core/parity.py)."""
    if kind == CLASS_MAP:
        return _class_map_metrics(reference, candidate)
    if kind == HEATMAP:
        return {"peak_agreement": _peak_agreement(reference, candidate)}
    if kind == BOXES:
        return {"box_iou": float(box_iou(reference.reshape(-1, 4), candidate.reshape(-1, 4)).mean())}
    return {}


def _class_map_metrics(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    expected, found = reference.argmax(axis=1), candidate.argmax(axis=1)
    ious = []
    for label in np.union1d(np.unique(expected), np.unique(found)):
        both = np.logical_and(expected == label, found == label).sum()
        either = np.logical_or(expected == label, found == label).sum()
        ious.append(both / either)
    return {"pixel_agreement": float((expected == found).mean()), "mean_iou": float(np.mean(ious))}


def figure_per_sample(kind: str, reference: np.ndarray, candidate: np.ndarray) -> np.ndarray | None:
    """The kind's gated figure of each sample where it is a measure, not one yes or no per sample: a class map's
    pixel agreement, a heatmap's share of peaks in place, boxes' mean IoU. None for logits (top-1 is one yes or no
    per sample, a coin toss on near-ties) and tensors: those are scored by cosine."""
    samples = len(reference)
    if kind == CLASS_MAP:
        return (reference.argmax(axis=1) == candidate.argmax(axis=1)).reshape(samples, -1).mean(axis=1)
    if kind == HEATMAP:
        return np.array([_peak_agreement(reference[i:i + 1], candidate[i:i + 1]) for i in range(samples)])
    if kind == BOXES:
        return box_iou(reference.reshape(-1, 4), candidate.reshape(-1, 4)).reshape(samples, -1).mean(axis=1)
    return None


PEAK_TOLERANCE = 1  # cells: a peak one cell over is the same keypoint at the heatmap's resolution


def _peak_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    height, width = reference.shape[-2:]
    expected = reference.reshape(*reference.shape[:2], -1).argmax(axis=-1)
    found = candidate.reshape(*candidate.shape[:2], -1).argmax(axis=-1)
    rows = np.abs(expected // width - found // width)
    columns = np.abs(expected % width - found % width)
    return float((np.maximum(rows, columns) <= PEAK_TOLERANCE).mean())


def box_iou(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """IoU of each pair of boxes (x1, y1, x2, y2; corners in either order); two empty boxes at one place agree."""
    def ordered(boxes):
        return np.minimum(boxes[:, :2], boxes[:, 2:]), np.maximum(boxes[:, :2], boxes[:, 2:])

    (low_a, high_a), (low_b, high_b) = ordered(first.astype(np.float64)), ordered(second.astype(np.float64))
    overlap = np.clip(np.minimum(high_a, high_b) - np.maximum(low_a, low_b), 0, None).prod(axis=1)
    union = (high_a - low_a).prod(axis=1) + (high_b - low_b).prod(axis=1) - overlap
    same = np.all(first == second, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, overlap / np.where(union > 0, union, 1), same.astype(np.float64))
