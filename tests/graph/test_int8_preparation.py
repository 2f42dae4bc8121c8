"""The int8 preparation passes: range equalization keeps the float function, range fitting clips outliers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from graph.passes.equalize import equalize_activation_ranges
from targets.tflite.activation_ranges import mse_optimal_range, percentile_range


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
    from graph.passes.equalize import _channel_peaks

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


def test_percentile_range_clips_only_the_rarest_values_and_keeps_zero_inside():
    values = np.random.default_rng(1).normal(loc=3.0, size=1_000_000)  # all positive but a few
    low, high = float(values.min()), float(values.max())
    histogram, _ = np.histogram(values, bins=2048, range=(low, high))
    clip_low, clip_high = percentile_range(histogram, low, high, kept=0.999)
    outside = np.mean((values < clip_low) | (values > clip_high))
    assert 0.0002 < outside <= 0.0011  # the 0.1 % asked for, give or take one bin
    assert clip_high < high and clip_low <= 0.0  # zero must stay exactly representable


def conv_outputs_with_weights(model: onnx.ModelProto, batch: np.ndarray) -> list[np.ndarray]:
    """Every Conv's output, so each layer's rounding error can be judged on its own."""
    probe = onnx.ModelProto.FromString(model.SerializeToString())
    for node in probe.graph.node:
        if node.op_type == "Conv":
            probe.graph.output.append(onnx.ValueInfoProto(name=node.output[0]))
    import onnxruntime

    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [node.output[0] for node in probe.graph.node if node.op_type == "Conv"]
    per_sample = [session.run(names, {session.get_inputs()[0].name: sample[None]}) for sample in batch]
    return [np.concatenate(outputs) for outputs in zip(*per_sample)]


def nearest_rounded(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnx import numpy_helper

    from graph.passes.weight_rounding import channel_scales

    model = onnx.ModelProto.FromString(model.SerializeToString())
    conv_weights = {node.input[1] for node in model.graph.node if node.op_type == "Conv"}
    for init in model.graph.initializer:
        if init.name in conv_weights:
            weights = numpy_helper.to_array(init)
            scales = channel_scales(weights)
            init.CopyFrom(numpy_helper.from_array((np.round(weights / scales) * scales).astype(np.float32), init.name))
    return model


def photo_batch(count: int, seed: int, size: int = 8) -> np.ndarray:
    """Real image statistics (neighbouring pixels correlate), which is what makes smart rounding pay."""
    from core.pixels import random_crop
    from exporter.images import builtin_photos

    photos = [photo for photo in builtin_photos() if photo.pixels.std() > 20]
    rng = np.random.default_rng(seed)
    crops = [random_crop(photos[i % len(photos)].pixels, size, size, rng) for i in range(count)]
    return (np.stack(crops).transpose(0, 3, 1, 2).astype(np.float32) / 255.0 - 0.5) / 0.25


def test_weight_rounding_lands_on_tflites_grid_and_beats_nearest_rounding(tmp_path):
    from onnx import numpy_helper

    from graph.passes.weight_rounding import LEVELS, channel_scales, round_weights_to_int8_grid

    model = to_onnx(skewed_chain(nn.ReLU6()), tmp_path / "chain.onnx")
    calibration, held_out = photo_batch(64, seed=0), photo_batch(32, seed=1)
    rounded, layers = round_weights_to_int8_grid(model, calibration)
    assert [layer.depthwise for layer in layers] == [False, True, False]

    originals = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for init in rounded.graph.initializer:
        if init.name in {node.input[1] for node in rounded.graph.node if node.op_type == "Conv"}:
            weights, scales = numpy_helper.to_array(init), channel_scales(originals[init.name])
            steps = weights / scales
            np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)  # on the grid ...
            np.testing.assert_allclose(np.abs(steps).reshape(len(steps), -1).max(axis=1), LEVELS, atol=1e-3)
            np.testing.assert_allclose(channel_scales(weights), scales, rtol=1e-6)  # ... TFLite will derive

    exact = conv_outputs_with_weights(model, held_out)
    ours = conv_outputs_with_weights(rounded, held_out)
    nearest = conv_outputs_with_weights(nearest_rounded(model), held_out)
    # judged on photos it did not see, layer by layer on the float inputs each layer received
    ours_error = np.mean((ours[-1] - exact[-1]) ** 2)
    nearest_error = np.mean((nearest[-1] - exact[-1]) ** 2)
    assert ours_error < 0.8 * nearest_error


def test_inner_tensors_returns_the_samples_for_the_graph_input(tmp_path):
    from graph.onnx_run import inner_tensors

    model = to_onnx(skewed_chain(nn.ReLU()), tmp_path / "chain.onnx")
    samples = photo_batch(3, seed=2)
    input_name = model.graph.input[0].name
    first_conv_output = next(n for n in model.graph.node if n.op_type == "Conv").output[0]
    batches = list(inner_tensors(model, [input_name, first_conv_output], samples))
    assert len(batches) == 3
    for sample, values in zip(samples, batches):
        np.testing.assert_array_equal(values[input_name], sample[None])
        assert values[first_conv_output].shape == (1, 8, 8, 8)


def test_range_methods_near_the_best_are_shortlisted_for_bias_correction_and_far_ones_are_not():
    from targets.tflite.activation_ranges import shortlist

    # MobileNetV2's measured scores: min/max has twice the error of the others.
    assert shortlist({"mse": 0.994766, "percentile": 0.995415, "minmax": 0.98935}) == ["mse", "percentile"]
    assert shortlist({"mse": 0.9999, "percentile": 0.9990, "minmax": 0.9990}) == ["mse"]
    assert shortlist({"mse": 1.0, "percentile": 1.0, "minmax": 0.99}) == ["mse", "percentile"]


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
