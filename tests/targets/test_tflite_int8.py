"""The int8 recipe's simulator and passes on a real trained model (the digits model of the session export):
the simulator computes what LiteRT computes, each pass keeps what it promises, and the int8 file does not
depend on the thread count."""
from __future__ import annotations

import hashlib
import platform

import numpy as np
import pytest

from core.parity import cosine_per_sample
from tests.helpers import digit_photos, preprocess

SAMPLES = 16


@pytest.fixture(scope="module")
def digits_tflite(digits_android_export):
    return {precision: (digits_android_export / f"my_mod_{precision}.tflite").read_bytes()
            for precision in ("fp32", "int8")}


@pytest.fixture(scope="module")
def samples_nhwc():
    photos, _ = digit_photos()
    return preprocess(photos[-SAMPLES:]).transpose(0, 2, 3, 1).astype(np.float64)


def _litert(model: bytes, samples_nhwc: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    from targets.tflite.runner import dequantize, quantize

    interpreter = Interpreter(model_content=model)
    interpreter.allocate_tensors()
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    outputs = []
    for sample in samples_nhwc.astype(np.float32):
        interpreter.set_tensor(tensor_in["index"], quantize(sample[None], tensor_in))
        interpreter.invoke()
        outputs.append(dequantize(interpreter.get_tensor(tensor_out["index"]), tensor_out).reshape(-1))
    return np.stack(outputs)


def _simulated(model: bytes, samples_nhwc: np.ndarray) -> np.ndarray:
    from targets.tflite.quantize import model_outputs
    from targets.tflite.simulator import Graph

    (outputs,) = model_outputs(Graph(model), samples_nhwc)
    return outputs.reshape(len(samples_nhwc), -1)


def test_the_simulated_float_model_computes_what_litert_computes(digits_tflite, samples_nhwc):
    simulated, litert = _simulated(digits_tflite["fp32"], samples_nhwc), _litert(digits_tflite["fp32"], samples_nhwc)
    # float32 kernels against float64 arithmetic: measured max 2.5e-5 on MobileNetV2's logits (|logit| ~ 10)
    np.testing.assert_allclose(simulated, litert, atol=1e-4 * np.abs(litert).max())


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="XNNPACK requantizes in float32 on x86 only; on ARM it uses fixed-point (rndnu) kernels")
def test_the_simulated_int8_model_computes_exactly_what_litert_with_xnnpack_computes(digits_tflite, samples_nhwc):
    """Every int8 value, not just close: LiteRT's reference kernels (without XNNPACK) and XNNPACK round a few
    values per layer one step apart, and on MobileNetV2 such a step grows through the later layers until
    top-1 answers change (a simulator with a float ADD read top-1 0.973 where LiteRT read 0.940). The only
    difference allowed is the float32 rounding of LiteRT's dequantized output; a wrong rounding mode, scale or
    zero point anywhere moves whole steps (one step of the logits here is ~1e-1)."""
    simulated, litert = _simulated(digits_tflite["int8"], samples_nhwc), _litert(digits_tflite["int8"], samples_nhwc)
    np.testing.assert_allclose(simulated, litert, rtol=0, atol=1e-6 * np.abs(litert).max())


def test_rounded_weights_lie_on_the_grid_tflite_quantizes_them_to(digits_tflite, samples_nhwc):
    from targets.tflite.model_edit import EditableModel
    from targets.tflite.rounding import LEVELS, roundable_ops, round_weights
    from targets.tflite.statistics import measure

    model = EditableModel(digits_tflite["fp32"])
    ops = roundable_ops(model)
    hessians = measure(model.graph, samples_nhwc, hessians_of={op.index for op in ops}).hessians
    assert len(round_weights(model, hessians)) == len(ops) > 0
    for op in ops:
        weights = model.constant(op.inputs[1]).astype(np.float64)
        rows = weights.reshape(-1, weights.shape[-1]).T if op.kind == "DEPTHWISE_CONV_2D" else \
            weights.reshape(len(weights), -1)
        scales = np.abs(rows).max(axis=1, keepdims=True) / LEVELS
        levels = rows / np.where(scales > 0, scales, 1)
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)


def test_the_int8_file_is_the_same_whatever_the_thread_count(digits_tflite, samples_nhwc):
    """The decisions are the simulator's, in float64, and everything written is rounded first: a different
    thread count (which changes the order of float sums) must not change a byte."""
    from targets.tflite.int8 import quantize_int8

    calibration = samples_nhwc.astype(np.float32)
    digests = {hashlib.sha256(quantize_int8(digits_tflite["fp32"], calibration, False, None, threads=threads)[0])
               .hexdigest() for threads in (1, 2)}
    assert len(digests) == 1


def test_bias_correction_is_applied_only_when_it_leads_on_photos_it_did_not_tune_on(digits_tflite, samples_nhwc):
    """The recipe measures the corrected and the uncorrected model on the calibration halves they were not
    tuned on, and keeps the correction only on a clear lead; forcing either way is recorded as such."""
    from targets.tflite.int8 import RecipeSteps, quantize_int8

    calibration = samples_nhwc.astype(np.float32)
    _, measured = quantize_int8(digits_tflite["fp32"], calibration, False, None)
    scores = measured["bias_correction"]["cross_fitted_cosine"]
    assert set(scores) == {"mse", "mse + bias correction"}
    _, never = quantize_int8(digits_tflite["fp32"], calibration, False, None, RecipeSteps(bias_correction="never"))
    _, always = quantize_int8(digits_tflite["fp32"], calibration, False, None, RecipeSteps(bias_correction="always"))
    assert never["bias_correction"]["applied"] is False and set(never["bias_correction"]["cross_fitted_cosine"]) == {"mse"}
    assert always["bias_correction"]["applied"] is True
    # Applied only with a lead (clear_winner's noise rule is tested on its own in test_activation_ranges.py).
    assert not measured["bias_correction"]["applied"] or scores["mse + bias correction"] > scores["mse"]
