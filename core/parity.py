"""Parity: how closely an artifact's outputs follow the reference, and whether that passes the gate."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from core.output_kinds import GATED_FIGURE, LOGITS, inferred_kind, kind_metrics


@dataclass(frozen=True)
class ParityThresholds:
    cosine: float  # the mean per-sample cosine similarity must reach this
    top1_agreement: float | None = None  # fraction of samples whose arg-max matches the reference (logits)
    pixel_agreement: float | None = None  # fraction of pixels whose class matches (class maps)
    peak_agreement: float | None = None  # fraction of keypoint heatmaps peaking within a cell (heatmaps)
    box_iou: float | None = None  # mean IoU of each box with the reference's (boxes)


# Origin: fp32 runtimes differ from PyTorch only by summation order (~1e-6 relative); fp16 storage keeps
# ~3 decimal digits; int8 with per-channel weights keeps the ranking of a classifier's logits on real photos.
# A task model's int8 gates (issue 19's bar): 98 % of pixels keep their class, 95 % of keypoints their peak, boxes
# keep 0.9 mean IoU.
_INT8_TASK_GATES = dict(pixel_agreement=0.98, peak_agreement=0.95, box_iou=0.9)
DEFAULT_THRESHOLDS: dict[str, ParityThresholds] = {
    "fp32": ParityThresholds(cosine=0.99999),
    "fp16": ParityThresholds(cosine=0.999),
    "int8": ParityThresholds(cosine=0.99, top1_agreement=0.95, **_INT8_TASK_GATES),
    # Core ML int8 weights and activations: gated like int8
    "w8a8": ParityThresholds(cosine=0.99, top1_agreement=0.95, **_INT8_TASK_GATES),
    # Core ML 6-bit weights: gated like int8
    "palette6": ParityThresholds(cosine=0.99, top1_agreement=0.95, **_INT8_TASK_GATES),
}


@dataclass(frozen=True)
class ParityResult:
    samples: int
    max_abs: float
    mean_abs: float
    cosine: float  # mean over samples
    cosine_min: float
    top1_agreement: float | None  # None when the output is not a class-score vector
    top5_overlap: float | None
    thresholds: ParityThresholds
    passed: bool
    failures: tuple[str, ...]  # each failed criterion with the measured value, for the user
    # Every sample whose top-1 class changed, with how far the reference ranked its own answer above the
    # artifact's. A lead of a few hundredths is a near-tie that any rounding can flip (on the default
    # MobileNetV2 even fp16 flips one sample); a large lead is a real error.
    top1_changes: tuple["Top1Change", ...] = ()
    # The 95 % interval of top-1 agreement: 48 of 50 crops agreeing reads 0.960 and means anything from
    # 0.865 to 0.989, which is what a release gate on it should be read against.
    top1_interval: tuple[float, float] | None = None
    # A model with several outputs: each output's own parity, in the model's order. The figures above are then
    # the worst output's (lowest cosine, largest error) and the failures name their output.
    per_output: tuple[tuple[str, "ParityResult"], ...] = ()
    kind: str | None = None  # what the output is (core/output_kinds.py); None for a record of several outputs
    snr_db: float | None = None  # 10 log10(signal power / error power) over every value
    metrics: dict = field(default_factory=dict)  # the kind's own figures, e.g. pixel_agreement and mean_iou

    def to_manifest(self) -> dict:
        record = asdict(self)
        record["thresholds"] = asdict(self.thresholds)
        record["failures"] = list(self.failures)
        record["top1_changes"] = [asdict(change) for change in self.top1_changes]
        record["per_output"] = {name: result.to_manifest() for name, result in self.per_output}
        return record


@dataclass(frozen=True)
class Top1Change:
    sample: int
    reference_class: int
    artifact_class: int
    reference_lead: float  # reference score of its class minus its score of the artifact's class, >= 0


def compare_outputs(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray],
                    thresholds: ParityThresholds, kinds: dict[str, str] | None = None) -> ParityResult:
    """Compare every output of the reference with the candidate's output of the same name. One output: exactly
    compare(); several: each compared alone (a box head in pixels must not drown a score head in 0..1) and the
    result passes only when every output passes."""
    kinds = kinds or {}
    if len(reference) == 1 and len(candidate) == 1:  # whatever each calls it (artifacts of older exports)
        (name, values), = reference.items()
        return compare(values, next(iter(candidate.values())), thresholds, kinds.get(name))
    missing = [name for name in reference if name not in candidate]
    if missing:
        return _missing_outputs(reference, candidate, missing, thresholds)
    results = tuple((name, compare(values, candidate[name], thresholds, kinds.get(name)))
                    for name, values in reference.items())
    worst = min((result for _, result in results), key=lambda result: np.nan_to_num(result.cosine, nan=-2.0))
    return ParityResult(
        samples=worst.samples,
        max_abs=max(result.max_abs for _, result in results),
        mean_abs=max(result.mean_abs for _, result in results),
        cosine=worst.cosine,
        cosine_min=min(result.cosine_min for _, result in results),
        snr_db=min((result.snr_db for _, result in results if result.snr_db is not None), default=None),
        top1_agreement=None,
        top5_overlap=None,
        thresholds=thresholds,
        passed=all(result.passed for _, result in results),
        failures=tuple(f"{name}: {failure}" for name, result in results for failure in result.failures),
        per_output=results,
    )


def _missing_outputs(reference: dict, candidate: dict, missing: list[str], thresholds: ParityThresholds) -> ParityResult:
    nan = float("nan")
    return ParityResult(
        samples=len(next(iter(reference.values()))), max_abs=nan, mean_abs=nan, cosine=nan, cosine_min=nan,
        top1_agreement=None, top5_overlap=None, thresholds=thresholds, passed=False,
        failures=(f"outputs {', '.join(missing)} missing; the artifact gives {', '.join(candidate) or 'none'}",),
    )


def compare(reference: np.ndarray, candidate: np.ndarray, thresholds: ParityThresholds,
            kind: str | None = None) -> ParityResult:
    """Compare N x ... outputs sample by sample; `kind` (core/output_kinds.py) is inferred from the shape when
    None."""
    kind = kind or inferred_kind(reference.shape)
    if reference.shape != candidate.shape:
        return _shape_mismatch(reference, candidate, thresholds)
    samples = reference.shape[0]
    ref = reference.reshape(samples, -1).astype(np.float64)
    cand = candidate.reshape(samples, -1).astype(np.float64)
    difference = np.abs(ref - cand)
    cosines = cosine_per_sample(ref, cand)
    class_scores = kind == LOGITS
    metrics = kind_metrics(kind, reference, candidate) if np.isfinite(cand).all() else {}
    changes = _top1_changes(ref, cand) if class_scores else ()
    agreeing = samples - len(changes)
    top1 = agreeing / samples if class_scores else None
    top5 = _top5_overlap(ref, cand) if class_scores else None
    finite = bool(np.isfinite(cand).all())
    failures = []
    if not finite:
        failures.append("outputs contain NaN or Inf")
    if not cosines.mean() >= thresholds.cosine:
        failures.append(f"cosine {cosines.mean():.6f} < {thresholds.cosine}")
    failures += _record_field_failures(reference, candidate, thresholds)
    failures += _metric_failures(kind, metrics, thresholds)
    if thresholds.top1_agreement is not None and top1 is not None and top1 < thresholds.top1_agreement:
        # The count, because near the gate three decimals round a failure up to it ("0.950 < 0.95").
        failures.append(f"top-1 agreement {top1:.4f} ({agreeing} of {samples} samples) < {thresholds.top1_agreement}")
    return ParityResult(
        samples=samples,
        max_abs=float(difference.max()),
        mean_abs=float(difference.mean()),
        cosine=float(cosines.mean()),
        cosine_min=float(cosines.min()),
        top1_agreement=top1,
        top5_overlap=top5,
        thresholds=thresholds,
        passed=not failures,
        failures=tuple(failures),
        top1_changes=changes,
        top1_interval=wilson_interval(agreeing, samples) if class_scores else None,
        kind=kind,
        snr_db=snr_db(ref, cand),
        metrics={name: round(value, 6) for name, value in metrics.items()},
    )


# How a failure names a kind's gated figure (core/output_kinds.GATED_FIGURE); top-1 has its own, with counts.
FIGURE_WORDS = {"pixel_agreement": "pixel agreement", "peak_agreement": "keypoint peak agreement",
                "box_iou": "mean box IoU"}


def _metric_failures(kind: str, metrics: dict[str, float], thresholds: ParityThresholds) -> list[str]:
    figure = GATED_FIGURE.get(kind)
    gate = getattr(thresholds, figure) if figure in metrics else None
    if gate is None or metrics[figure] >= gate:
        return []
    return [f"{FIGURE_WORDS[figure]} {metrics[figure]:.4f} < {gate}"]


SNR_CEILING_DB = 200.0  # identical outputs: no error power to divide by


def snr_db(ref: np.ndarray, cand: np.ndarray) -> float:
    error = float(((ref - cand) ** 2).sum())
    signal = float((ref**2).sum())
    if not np.isfinite(error):
        return float("-inf")
    if error == 0:
        return SNR_CEILING_DB
    return float(min(SNR_CEILING_DB, 10 * np.log10(max(signal, 1e-300) / error)))


# A detector's N x anchors x fields output (4 box coordinates, then scores) is judged field by field too: boxes in
# pixels and scores in 0..1 in one tensor share one int8 scale, which can round every score to 0 while the
# tensor's cosine, carried by the boxes, still reads 0.999.
MAX_RECORD_FIELDS = 128


def _is_record(output: np.ndarray) -> bool:
    """N x anchors x fields, with a few fields on the last axis."""
    return output.ndim == 3 and 2 <= output.shape[-1] <= MAX_RECORD_FIELDS


def _record_field_failures(reference: np.ndarray, candidate: np.ndarray, thresholds: ParityThresholds) -> list[str]:
    if not _is_record(reference):
        return []
    fields = reference.shape[-1]
    ref = reference.reshape(-1, fields).T.astype(np.float64)
    cand = candidate.reshape(-1, fields).T.astype(np.float64)
    # Centred: scores near 0.5 rounded to one value keep a cosine near 1 and lose every ranking.
    correlations = cosine_per_sample(ref - ref.mean(axis=1, keepdims=True), cand - cand.mean(axis=1, keepdims=True))
    spread = ref.std(axis=1)
    bad = [field for field in range(fields) if not correlations[field] >= thresholds.cosine]
    if not bad:
        return []
    worst = min(bad, key=lambda field: correlations[field])
    return [f"field {worst} of {fields} along the last axis correlates {correlations[worst]:.4f} with the reference "
            f"({len(bad)} field(s) below {thresholds.cosine}); it spreads {spread[worst]:.3g} and the widest field "
            f"{spread.max():.3g}: values of very different ranges share one tensor (and one int8 scale) — return "
            "them as separate outputs (a tuple or dict, e.g. boxes and scores) so each keeps its own"]


# Uniform rounding noise of step q has deviation q / sqrt(12); a field keeps correlation 0.99 with its reference
# (the int8 cosine gate) only when its own deviation is at least 2 steps of the tensor's scale. 4 leaves a margin.
MIXED_RANGE_STEPS = 4


def mixed_range_fields(output: np.ndarray) -> tuple[int, float, float] | None:
    """For an N x anchors x fields output whose narrowest field spreads (std) less than MIXED_RANGE_STEPS int8 steps
    of the whole tensor's range (one scale for every field): (that field, its spread, the step); else None."""
    if not _is_record(output):
        return None
    fields = output.reshape(-1, output.shape[-1]).astype(np.float64)
    spread = fields.std(axis=0)
    step = (fields.max() - fields.min()) / 255
    narrowest = int(np.argmin(spread))
    if not np.isfinite(step) or step == 0 or spread[narrowest] >= MIXED_RANGE_STEPS * step:
        return None
    return narrowest, float(spread[narrowest]), float(step)


WILSON_Z = 1.96  # 95 %


def wilson_interval(successes: int, trials: int, z: float = WILSON_Z) -> tuple[float, float]:
    """The score interval of a binomial proportion; unlike p ± z·se it stays inside [0, 1] near 1."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def _top1_changes(ref: np.ndarray, cand: np.ndarray) -> tuple[Top1Change, ...]:
    reference_class, artifact_class = ref.argmax(axis=1), cand.argmax(axis=1)
    return tuple(
        Top1Change(int(sample), int(reference_class[sample]), int(artifact_class[sample]),
                   float(ref[sample, reference_class[sample]] - ref[sample, artifact_class[sample]]))
        for sample in np.flatnonzero(reference_class != artifact_class)
    )


def cosine_per_sample(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    dots = (ref * cand).sum(axis=1)
    # Two all-zero outputs are identical; one zero and one not share nothing.
    both_zero = norms == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        cosines = np.where(both_zero, np.where(np.abs(ref - cand).max(axis=1) == 0, 1.0, 0.0), dots / norms)
    return np.nan_to_num(cosines, nan=0.0)


def _top5_overlap(ref: np.ndarray, cand: np.ndarray) -> float:
    k = min(5, ref.shape[1])
    ref_top = np.argsort(-ref, axis=1)[:, :k]
    cand_top = np.argsort(-cand, axis=1)[:, :k]
    overlap = [len(set(r) & set(c)) / k for r, c in zip(ref_top, cand_top)]
    return float(np.mean(overlap))


def _shape_mismatch(reference: np.ndarray, candidate: np.ndarray, thresholds: ParityThresholds) -> ParityResult:
    nan = float("nan")
    return ParityResult(
        samples=reference.shape[0], max_abs=nan, mean_abs=nan, cosine=nan, cosine_min=nan,
        top1_agreement=None, top5_overlap=None, thresholds=thresholds, passed=False,
        failures=(f"output shape {candidate.shape} differs from the reference {reference.shape}",),
    )
