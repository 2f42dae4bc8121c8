"""Edited ONNX weights written into a converted float .tflite: exact where located, refused where ambiguous."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from targets.tflite.weights import substitute_edited_weights


def onnx_with(initializers: dict[str, np.ndarray]) -> onnx.ModelProto:
    """An ONNX model that only carries initializers: all the substitution reads."""
    tensors = [numpy_helper.from_array(value.astype(np.float32), name) for name, value in initializers.items()]
    graph = helper.make_graph([], "weights", [], [], initializer=tensors)
    return helper.make_model(graph)


@pytest.fixture(scope="module")
def conv_then_depthwise():
    """Keras conv 3x3 (3->4), depthwise 3x3, pointwise 1x1 (4->2); its float .tflite; its weights in ONNX layout."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    inputs = tf.keras.Input((6, 6, 3), batch_size=1)
    conv = tf.keras.layers.Conv2D(4, 3, padding="same")
    depthwise = tf.keras.layers.DepthwiseConv2D(3, padding="same")
    pointwise = tf.keras.layers.Conv2D(2, 1)
    model = tf.keras.Model(inputs, pointwise(depthwise(conv(inputs))))
    conv.set_weights([rng.normal(size=(3, 3, 3, 4)), rng.normal(size=4)])
    depthwise.set_weights([rng.normal(size=(3, 3, 4, 1)), rng.normal(size=4)])
    pointwise.set_weights([rng.normal(size=(1, 1, 4, 2)), rng.normal(size=2)])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    onnx_layout = {
        "conv.weight": conv.get_weights()[0].transpose(3, 2, 0, 1),  # HWIO -> OIHW
        "conv.bias": conv.get_weights()[1],
        "dw.weight": depthwise.get_weights()[0].transpose(2, 3, 0, 1),  # HW C 1 -> C 1 H W
        "dw.bias": depthwise.get_weights()[1],
        "pw.weight": pointwise.get_weights()[0].transpose(3, 2, 0, 1),  # a 1x1 kernel: same bytes in every layout
        "pw.bias": pointwise.get_weights()[1],
    }
    return model, converter.convert(), {k: v.astype(np.float32) for k, v in onnx_layout.items()}


def run_tflite(model_bytes: bytes, batch: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model_bytes)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], batch)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_edited_conv_and_depthwise_weights_land_in_the_right_tensors(conv_then_depthwise):
    keras_model, float_tflite, weights = conv_then_depthwise
    edited = {name: value * 1.5 + 0.25 for name, value in weights.items()}
    substituted = substitute_edited_weights(float_tflite, onnx_with(weights), onnx_with(edited))
    assert substituted is not None

    conv, depthwise, pointwise = keras_model.layers[1:4]
    conv.set_weights([edited["conv.weight"].transpose(2, 3, 1, 0), edited["conv.bias"]])
    depthwise.set_weights([edited["dw.weight"].transpose(2, 3, 0, 1), edited["dw.bias"]])
    pointwise.set_weights([edited["pw.weight"].transpose(2, 3, 1, 0), edited["pw.bias"]])
    batch = np.random.default_rng(1).normal(size=(1, 6, 6, 3)).astype(np.float32)
    np.testing.assert_allclose(run_tflite(substituted, batch), keras_model(batch).numpy(), rtol=1e-4, atol=1e-4)
    assert not np.allclose(run_tflite(float_tflite, batch), run_tflite(substituted, batch))


def test_unchanged_weights_return_the_model_as_it_was(conv_then_depthwise):
    _, float_tflite, weights = conv_then_depthwise
    assert substitute_edited_weights(float_tflite, onnx_with(weights), onnx_with(weights)) == float_tflite


def test_a_weight_whose_values_another_tensor_shares_is_refused(conv_then_depthwise):
    _, float_tflite, weights = conv_then_depthwise
    twin = {**weights, "twin.bias": weights["conv.bias"].copy()}
    edited = {**twin, "conv.bias": twin["conv.bias"] + 1.0}
    assert substitute_edited_weights(float_tflite, onnx_with(twin), onnx_with(edited)) is None


def test_a_weight_missing_from_the_tflite_graph_is_refused(conv_then_depthwise):
    _, float_tflite, weights = conv_then_depthwise
    stranger = {**weights, "other.weight": np.full((2, 2, 1, 1), 7.0, np.float32)}
    edited = {**stranger, "other.weight": stranger["other.weight"] * 2}
    assert substitute_edited_weights(float_tflite, onnx_with(stranger), onnx_with(edited)) is None
