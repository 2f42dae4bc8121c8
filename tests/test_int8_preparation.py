"""The int8 preparation passes: range equalization keeps the float function, range fitting clips outliers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from targets.equalize import equalize_activation_ranges
from targets.tflite import mse_optimal_range


def skewed_chain(activation: nn.Module) -> nn.Module:
    """conv -> activation -> depthwise conv -> activation -> pointwise conv, with channel ranges 1000x apart."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), activation, nn.Conv2d(8, 8, 3, padding=1, groups=8), activation,
        nn.Conv2d(8, 4, 1),
    ).eval()
    with torch.no_grad():
        model[0].weight[:4] *= 0.001  # half the channels barely move: int8 would give them ~1 level
        model[0].bias[:4] = 0.0005
    return model


def to_onnx(model: nn.Module, path) -> onnx.ModelProto:
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17)
    return onnx.load(str(path))


def run(model: onnx.ModelProto, batch: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {session.get_inputs()[0].name: x[None]})[0] for x in batch])


def small_channel_peak(model: onnx.ModelProto, batch: np.ndarray) -> float:
    from targets.equalize import _channel_peaks

    first_conv_output = next(n for n in model.graph.node if n.op_type == "Conv").output[0]
    return float(_channel_peaks(model, [first_conv_output], batch)[0][:4].max())


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.ReLU6()], ids=["relu", "relu6"])
def test_equalization_keeps_outputs_and_lifts_the_small_channels(activation, tmp_path):
    model = to_onnx(skewed_chain(activation), tmp_path / "chain.onnx")
    calibration = np.random.default_rng(0).normal(size=(16, 3, 8, 8)).astype(np.float32)
    equalized, pairs = equalize_activation_ranges(model, calibration)
    assert len(pairs) == 2 and pairs[0].depthwise and not pairs[1].depthwise
    np.testing.assert_allclose(run(equalized, calibration), run(model, calibration), rtol=1e-4, atol=1e-5)
    # lifted up to the MAX_SCALE cap of 64x, where int8 gives them tens of levels instead of one
    assert small_channel_peak(equalized, calibration) > 50 * small_channel_peak(model, calibration)


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
