"""A measured error distribution of the latency projection: what an interval and a chance are read from.

The errors are log(measured / projected) of held-out (device setting, network) pairs
(validation/projection_validation.py); a distribution keeps their quantiles at fixed probabilities, so that a
profile file can carry it and a projection can say "90 % interval" and "chance of meeting the target".
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

QUANTILE_PROBABILITIES = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99)
DEFAULT_LEVEL = 0.90


@dataclass(frozen=True)
class ErrorDistribution:
    """Held-out errors of one stratum: quantiles of log(measured / projected) at QUANTILE_PROBABILITIES."""

    stratum: str
    pairs: int
    log_quantiles: tuple[float, ...]
    median_abs_error_percent: float  # median of |projected / measured - 1|, in %

    @classmethod
    def from_log_ratios(cls, stratum: str, log_ratios) -> "ErrorDistribution":
        values = np.asarray(list(log_ratios), float)
        if not len(values):
            raise ValueError(f"no held-out errors for {stratum}")
        return cls(stratum, len(values), tuple(float(q) for q in np.quantile(values, QUANTILE_PROBABILITIES)),
                   float(np.median(np.abs(np.exp(-values) - 1.0)) * 100))

    def ratio_interval(self, level: float = DEFAULT_LEVEL) -> tuple[float, float]:
        """measured / projected at the fast and the slow end of the central `level` interval."""
        tail = (1.0 - level) / 2
        return math.exp(self._quantile(tail)), math.exp(self._quantile(1.0 - tail))

    def chance_at_most(self, ratio: float) -> float:
        """Probability that measured / projected <= `ratio`: interpolated between the quantiles and clamped to
        [0.01, 0.99], since the held-out pairs do not resolve the tails beyond."""
        if ratio <= 0:
            return QUANTILE_PROBABILITIES[0]
        return float(np.interp(math.log(ratio), self.log_quantiles, QUANTILE_PROBABILITIES))

    def _quantile(self, probability: float) -> float:
        if not QUANTILE_PROBABILITIES[0] <= probability <= QUANTILE_PROBABILITIES[-1]:
            raise ValueError(f"no quantile is kept for probability {probability:g}; "
                             f"levels up to {QUANTILE_PROBABILITIES[-1] - QUANTILE_PROBABILITIES[0]:.2f}")
        return float(np.interp(probability, QUANTILE_PROBABILITIES, self.log_quantiles))

    def as_dict(self) -> dict:
        return {"stratum": self.stratum, "pairs": self.pairs,
                "median_abs_error_percent": round(self.median_abs_error_percent, 2),
                "log_quantiles": [round(q, 5) for q in self.log_quantiles]}
