"""int8 activation ranges: each tensor's clipping range, by one of several methods, from the calibration photos.

TensorFlow's calibration records each activation's min/max, which a few outlier pixels stretch. Which
replacement is best depends on the model (the shape of its activation distributions), so the TFLite target
quantizes with every method here and keeps the one whose int8 outputs agree best with the float model's
(`targets.tflite._quantize_int8`, with `shortlist` and `clear_winner` below); the manifest records the choice
and every method's score (`describe_choice`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HISTOGRAM_BINS = 2048
RANGE_FRACTIONS = np.linspace(0.25, 1.0, 61)
PERCENTILE_KEPT = 0.9999  # of each activation's values inside the range; the rest is clipped
# In the order they are preferred when their scores tie.
RANGE_METHODS = ("mse", "percentile", "minmax")
METHOD_DESCRIPTIONS = {
    "mse": "mse-optimal per tensor (least expected clipping + rounding error over a histogram of the photos)",
    "percentile": f"{PERCENTILE_KEPT * 100:g}th percentile per tensor (histogram of the photos)",
    "minmax": "min/max per tensor over the photos (TensorFlow's calibration)",
}


@dataclass(frozen=True)
class ActivationHistograms:
    ranges: dict[int, tuple[float, float]]  # tensor index -> the calibrator's (min, max)
    counts: dict[int, np.ndarray]  # tensor index -> HISTOGRAM_BINS counts over that range


def calibrated_ranges(model) -> dict[int, tuple[float, float]]:
    """The per-tensor (min, max) the calibrator wrote into a flatbuffer model object (activations only)."""
    return {
        index: (float(t.quantization.min[0]), float(t.quantization.max[0]))
        for index, t in enumerate(model.subgraphs[0].tensors)
        if t.quantization is not None and t.quantization.min is not None and len(t.quantization.min) == 1
        and model.buffers[t.buffer].data is None and t.quantization.max[0] > t.quantization.min[0]
    }


def collect_histograms(interpreter, ranges: dict[int, tuple[float, float]], samples_nhwc: np.ndarray,
                       skip: set[int]) -> ActivationHistograms:
    """Histograms of every ranged activation over the samples, read from a tensor-keeping interpreter of
    the calibrated float model. Tensors in `skip` (the input: its range is the contract's) are left out."""
    input_index = interpreter.get_input_details()[0]["index"]
    kept = {index: span for index, span in ranges.items() if index not in skip}
    counts = {index: np.zeros(HISTOGRAM_BINS) for index in kept}
    for sample in samples_nhwc:
        interpreter.set_tensor(input_index, sample[None])
        interpreter.invoke()
        for index, (low, high) in kept.items():
            counts[index] += np.histogram(interpreter.get_tensor(index), bins=HISTOGRAM_BINS, range=(low, high))[0]
    return ActivationHistograms(kept, {index: c for index, c in counts.items() if c.sum() > 0})


def clipping_range(method: str, histogram: np.ndarray, low: float, high: float) -> tuple[float, float]:
    if method == "mse":
        return mse_optimal_range(histogram, low, high)
    if method == "percentile":
        return percentile_range(histogram, low, high)
    if method == "minmax":
        return low, high
    raise ValueError(f"unknown activation range method {method!r}; choose from {RANGE_METHODS}")


def mse_optimal_range(histogram: np.ndarray, low: float, high: float, levels: int = 256) -> tuple[float, float]:
    """The clipping range [a*low, a*high] with the least expected squared int8 error over `histogram`."""
    centers = _bin_centers(histogram, low, high)
    weights = histogram / histogram.sum()
    best = (np.inf, low, high)
    for fraction in RANGE_FRACTIONS:
        clip_low, clip_high = min(low * fraction, 0.0), max(high * fraction, 0.0)
        step = (clip_high - clip_low) / (levels - 1)
        inside = (centers >= clip_low) & (centers <= clip_high)
        clipping_error = (weights * (centers - np.clip(centers, clip_low, clip_high)) ** 2).sum()
        error = clipping_error + weights[inside].sum() * step**2 / 12
        if error < best[0]:
            best = (error, float(clip_low), float(clip_high))
    return best[1], best[2]


def percentile_range(histogram: np.ndarray, low: float, high: float,
                     kept: float = PERCENTILE_KEPT) -> tuple[float, float]:
    """The range holding `kept` of the values, the clipped rest split evenly between both tails; zero always
    inside (int8 needs zero exactly representable)."""
    edges = np.linspace(low, high, len(histogram) + 1)
    cumulative = np.cumsum(histogram) / histogram.sum()
    tail = (1.0 - kept) / 2
    first = int(np.searchsorted(cumulative, tail, side="right"))
    last = int(np.searchsorted(cumulative, 1.0 - tail, side="left"))
    return min(float(edges[first]), 0.0), max(float(edges[min(last + 1, len(histogram))]), 0.0)


def _bin_centers(histogram: np.ndarray, low: float, high: float) -> np.ndarray:
    return low + (np.arange(len(histogram)) + 0.5) * (high - low) / len(histogram)


def with_ranges(model, histograms: ActivationHistograms, method: str) -> None:
    """Write `method`'s range for every histogrammed tensor into the flatbuffer model object, in place."""
    tensors = model.subgraphs[0].tensors
    for index, counts in histograms.counts.items():
        low, high = clipping_range(method, counts, *histograms.ranges[index])
        tensors[index].quantization.min = [low]
        tensors[index].quantization.max = [high]


# ---- choosing among the methods (by measured agreement, in targets.tflite) --------------------------------

# Range methods whose error (1 - cosine) before bias correction is within this factor of the best one's are
# bias-corrected and compared again; the others (min/max, typically twice the error) are not worth the time.
SHORTLIST_ERROR_RATIO = 1.6


# How many standard errors of the per-photo difference a method must lead the preferred one by. On 32 photos,
# scores 4e-5 apart are noise: on the 0.25-wide MobileNetV1 such a lead swapped mse for percentile ranges and
# moved validation top-1 agreement from 0.957 to 0.950.
CLEAR_LEAD_STANDARD_ERRORS = 2.0


def clear_winner(cosines_by_method: dict[str, np.ndarray]) -> str:
    """The method with the best mean per-photo cosine, if it leads the preferred (first) method by more than
    noise: a paired comparison over the same photos. Otherwise the preferred method."""
    preferred = next(iter(cosines_by_method))
    best = max(cosines_by_method, key=lambda method: cosines_by_method[method].mean())
    lead = cosines_by_method[best] - cosines_by_method[preferred]
    noise = lead.std(ddof=1) / np.sqrt(len(lead)) if len(lead) > 1 else np.inf
    return best if lead.mean() > CLEAR_LEAD_STANDARD_ERRORS * noise else preferred


def shortlist(cosine_by_method: dict[str, float]) -> list[str]:
    """The methods worth bias-correcting, in the order they were given."""
    best_error = 1.0 - max(cosine_by_method.values())
    return [method for method, cosine in cosine_by_method.items()
            if 1.0 - cosine <= SHORTLIST_ERROR_RATIO * best_error + 1e-9]


def describe_choice(choice: dict | None) -> dict:
    """The manifest's record of the TFLite target's choice: its scores, what the method does, how it won."""
    if not choice:
        return {"method": "unknown"}
    return {**choice, "description": METHOD_DESCRIPTIONS[choice["method"]],
            "chosen_by": "mean output cosine against the float model after bias correction, on calibration "
                         "photos bias correction did not measure; a method replaces the earlier one in the order "
                         f"{', '.join(RANGE_METHODS)} only when it leads by more than {CLEAR_LEAD_STANDARD_ERRORS:g} "
                         "standard errors of the per-photo difference"}
