"""ncnn int8: the pair written from the fp32 one loads in the ncnn wheel, computes in int8, meets the int8 gate on
the trained digits model, and its bytes do not move with float noise in the calibration."""
from __future__ import annotations

import json

import numpy as np
import pytest

from core.errors import ConverterError
from graph.ncnn_param import NcnnLayer, parse_ncnn_param
from graph.activation_ranges import on_grid
from targets.ncnn.int8 import INT8_SCALE_TERMS, quantizable_layer, write_int8
from targets.ncnn.weights import read_weights
from tests.helpers import digit_photos, preprocess

CALIBRATION_SAMPLES = 24


@pytest.fixture(scope="module")
def digits_pairs(digits_android_export):
    return {precision: (digits_android_export / f"my_mod_{precision}.ncnn.param",
                        digits_android_export / f"my_mod_{precision}.ncnn.bin") for precision in ("fp32", "int8")}


@pytest.fixture(scope="module")
def calibration():
    photos, _ = digit_photos()
    return preprocess(photos[:CALIBRATION_SAMPLES]).astype(np.float32)


def test_the_android_export_ships_an_ncnn_int8_pair_that_meets_the_int8_gate(digits_android_export, digits_pairs):
    manifest = json.loads((digits_android_export / "manifest.json").read_text())
    (entry,) = [a for a in manifest["artifacts"] if a["runtime"] == "ncnn" and a["precision"] == "int8"]
    assert entry["parity"]["passed"], entry["parity"]["failures"]
    recipe = entry["details"]["int8_recipe"]
    layers = parse_ncnn_param(digits_pairs["int8"][0])
    quantizable = [layer for layer in layers if quantizable_layer(layer)]
    int8_layers = [layer for layer in quantizable if layer.get(8) == INT8_SCALE_TERMS[layer.type]]
    assert len(int8_layers) == recipe["int8_layers"] == len(quantizable) - len(recipe["float_layers"]) > 0
    fp32_bytes, int8_bytes = (pair[1].stat().st_size for pair in digits_pairs.values())
    assert int8_bytes < 0.4 * fp32_bytes  # int8 weights: a quarter of the convolutions' bytes, plus scales (measured 0.32)


def test_the_int8_pair_computes_in_int8_and_stays_close_to_fp32(digits_pairs, calibration):
    from targets.ncnn.runner import NcnnRunner

    fp32 = NcnnRunner(*digits_pairs["fp32"], "fp32").run(calibration)
    int8 = NcnnRunner(*digits_pairs["int8"], "int8").run(calibration)
    assert NcnnRunner(*digits_pairs["int8"], "int8").options.use_int8_inference
    cosines = (fp32 * int8).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(int8, axis=1)
    # int8 differs from fp32 (it is not a float model in disguise) and keeps its answers; measured 2026-12-06 on
    # these 24 photos: cosine 0.9990-0.99999 per photo, same top-1 on all.
    assert 0.99 < cosines.min() and cosines.mean() < 0.999999
    assert (fp32.argmax(1) == int8.argmax(1)).mean() >= 0.95


def test_float_noise_in_the_calibration_does_not_change_a_byte(digits_pairs, calibration, tmp_path):
    written = []
    # 1e-7 relative: float32 rounding of other CPUs' kernels; the thresholds' 0.54 % grid steps absorb it.
    noise = np.random.default_rng(0).standard_normal(calibration.shape).astype(np.float32) * 1e-7
    for index, samples in enumerate((calibration, calibration * (1 + noise))):
        param, weights = tmp_path / f"{index}.param", tmp_path / f"{index}.bin"
        write_int8(*digits_pairs["fp32"], samples, param, weights)
        written.append((param.read_bytes(), weights.read_bytes()))
    assert written[0] == written[1]


def test_thresholds_snap_to_the_grid_and_an_all_zero_input_stays_float():
    assert on_grid(0.0) == 0.0
    for value in (0.013, 1.0, 6.0, 37.2):
        assert abs(on_grid(value) / value - 1) <= 2 ** (1 / 256) - 1
        assert on_grid(value * (1 + 1e-9)) == on_grid(value)


def test_a_layer_whose_weights_cannot_be_placed_is_named(digits_pairs):
    layers = parse_ncnn_param(digits_pairs["fp32"][0])
    stranger = NcnnLayer("Convolution3D", "conv3d_0", layers[-1].outputs, ("extra",), {})
    with pytest.raises(ConverterError, match="Convolution3D"):
        read_weights((*layers, stranger), digits_pairs["fp32"][1].read_bytes())
    with pytest.raises(ConverterError, match="bytes of a"):
        read_weights(layers, digits_pairs["fp32"][1].read_bytes() + b"\0" * 8)


def test_a_gate_int8_misses_keeps_the_costliest_layers_float_until_it_passes(digits_pairs, calibration, tmp_path):
    from core.parity import ParityThresholds
    from targets.ncnn.fallback import gate_fallback

    fp32_param, fp32_weights = digits_pairs["fp32"]
    outputs = {"output": parse_ncnn_param(fp32_param)[-1].outputs[0]}
    plain = write_int8(fp32_param, fp32_weights, calibration, tmp_path / "plain.param", tmp_path / "plain.bin",
                       gate_fallback(fp32_param, fp32_weights, outputs, calibration, ParityThresholds(cosine=0.9),
                                     {}, tmp_path))
    assert plain.float_fallback["needed"] is False and not plain.float_layers
    # A gate just above what plain int8 reaches on these photos: some layers must stay float, and then it passes.
    strict = ParityThresholds(cosine=(1 + plain.float_fallback["before"]["cosine"]) / 2)
    record = write_int8(fp32_param, fp32_weights, calibration, tmp_path / "kept.param", tmp_path / "kept.bin",
                        gate_fallback(fp32_param, fp32_weights, outputs, calibration, strict, {}, tmp_path))
    fallback = record.float_fallback
    assert fallback["needed"] and fallback["passed"] and fallback["after"]["cosine"] >= strict.cosine
    assert set(fallback["float_tensors"]) <= set(record.float_layers)
    written = {layer.name: layer for layer in parse_ncnn_param(tmp_path / "kept.param")}
    assert all(INT8_SCALE_TERMS.get(written[name].type) and 8 not in written[name].params
               for name in fallback["float_tensors"])
    assert record.int8_layers == plain.int8_layers - len(fallback["float_tensors"])
