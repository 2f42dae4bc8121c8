"""Activation ranges: the range methods on histograms, and choosing among methods by measured scores."""
from __future__ import annotations

import numpy as np

from targets.tflite.activation_ranges import mse_optimal_range, percentile_range


def test_mse_range_is_narrower_than_min_max_on_a_long_tail_and_quantizes_it_better():
    values = np.abs(np.random.default_rng(0).laplace(size=1_000_000))  # post-ReLU activations look like this
    low, high = 0.0, float(values.max())
    histogram, _ = np.histogram(values, bins=2048, range=(low, high))
    fitted_low, fitted_high = mse_optimal_range(histogram, low, high)
    assert fitted_low == 0.0 and fitted_high < 0.8 * high

    def int8_error(top: float) -> float:
        step = top / 255
        return float(np.mean((np.clip(np.round(values / step), 0, 255) * step - values) ** 2))

    assert int8_error(fitted_high) < 0.7 * int8_error(high)


def test_percentile_range_clips_only_the_rarest_values_and_keeps_zero_inside():
    values = np.random.default_rng(1).normal(loc=3.0, size=1_000_000)  # all positive but a few
    low, high = float(values.min()), float(values.max())
    histogram, _ = np.histogram(values, bins=2048, range=(low, high))
    clip_low, clip_high = percentile_range(histogram, low, high, kept=0.999)
    outside = np.mean((values < clip_low) | (values > clip_high))
    assert 0.0002 < outside <= 0.0011  # the 0.1 % asked for, give or take one bin
    assert clip_high < high and clip_low <= 0.0  # zero must stay exactly representable


def test_a_range_method_replaces_the_preferred_one_only_when_it_leads_by_more_than_noise():
    from targets.tflite.activation_ranges import clear_winner

    photos = np.random.default_rng(0).normal(size=32)
    preferred = 0.999 + 1e-4 * photos
    # Ahead on average by much less than the photo-to-photo spread of the difference: noise.
    noisy_lead = preferred + 3e-5 + 3e-4 * np.random.default_rng(1).normal(size=32)
    assert clear_winner({"mse": preferred, "percentile": noisy_lead}) == "mse"
    # Ahead on nearly every photo: a real lead.
    clear_lead = preferred + 3e-5 + 1e-6 * np.random.default_rng(1).normal(size=32)
    assert clear_winner({"mse": preferred, "percentile": clear_lead}) == "percentile"
    assert clear_winner({"mse": clear_lead, "percentile": preferred}) == "mse"
    assert clear_winner({"minmax": preferred}) == "minmax"
