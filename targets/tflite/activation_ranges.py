"""int8 activation ranges: each tensor's clipping range, by one of several methods, from the calibration photos.

TensorFlow's calibration records each activation's min/max, which a few outlier pixels stretch. The int8
recipe (targets/tflite/int8.py) histograms every activation in the simulator and takes the range each method
here gives; with several methods it keeps the one whose cross-fitted scores lead by more than noise
(`clear_winner`); the manifest records the choice and every method's score (`describe_choice`).
"""
from __future__ import annotations


import numpy as np

RANGE_FRACTIONS = np.linspace(0.25, 1.0, 61)
PERCENTILE_KEPT = 0.9999  # of each activation's values inside the range; the rest is clipped
# In the order they are preferred when their scores tie.
RANGE_METHODS = ("mse", "percentile", "minmax")
METHOD_DESCRIPTIONS = {
    "mse": "mse-optimal per tensor (least expected clipping + rounding error over a histogram of the photos)",
    "percentile": f"{PERCENTILE_KEPT * 100:g}th percentile per tensor (histogram of the photos)",
    "minmax": "min/max per tensor over the photos (TensorFlow's calibration)",
}


def clipping_range(method: str, histogram: np.ndarray, low: float, high: float,
                   bins: tuple[float, float] | None = None) -> tuple[float, float]:
    """The method's range for a tensor whose values span [low, high], histogrammed over `bins` (default: the
    span; a wider one counts the values beyond it in its edge bins)."""
    bins = bins or (low, high)
    if method == "mse":
        return mse_optimal_range(histogram, *bins, span=(low, high))
    if method == "percentile":
        clip_low, clip_high = percentile_range(histogram, *bins)
        return max(clip_low, min(low, 0.0)), min(clip_high, max(high, 0.0))
    if method == "minmax":
        return low, high
    raise ValueError(f"unknown activation range method {method!r}; choose from {RANGE_METHODS}")


def mse_optimal_range(histogram: np.ndarray, low: float, high: float, levels: int = 256,
                      span: tuple[float, float] | None = None) -> tuple[float, float]:
    """The clipping range [a*low, a*high] of the values' span (default: the histogram's range) with the least
    expected squared int8 error over `histogram`."""
    centers = _bin_centers(histogram, low, high)
    low, high = span or (low, high)
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


# ---- choosing among the methods (by measured agreement, in targets.tflite) --------------------------------

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


def describe_choice(choice: dict | None) -> dict:
    """The manifest's record of the TFLite target's choice: its scores, what the method does, how it won."""
    if not choice:
        return {"method": "unknown"}
    return {**choice, "description": METHOD_DESCRIPTIONS[choice["method"]],
            "chosen_by": "mean output score (cosine, or the figure of each output's kind where scored_by says so) "
                         "against the float model of each method's int8 model on both halves of "
                         "the calibration photos (before bias correction); a method replaces the earlier one "
                         f"in the order {', '.join(RANGE_METHODS)} only when it leads by more than "
                         f"{CLEAR_LEAD_STANDARD_ERRORS:g} standard errors of the per-sample difference"}
