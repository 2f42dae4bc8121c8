"""`mobile-export explain`: a deliberately broken int8 layer is the layer explain names."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from exporter.cli import main

WEIGHTED_TFLITE_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def break_weighted_op(tflite_path: Path, position: int, what: str) -> None:
    """Negate the int8 weights or the int32 bias of the position-th weighted op of a .tflite, in place."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(tflite_path.read_bytes(), 0))
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    wanted = {getattr(schema.BuiltinOperator, name) for name in WEIGHTED_TFLITE_OPS}
    op = [op for op in model.subgraphs[0].operators if codes[op.opcodeIndex] in wanted][position]
    tensor = model.subgraphs[0].tensors[op.inputs[1 if what == "weights" else 2]]
    dtype = np.int8 if what == "weights" else np.int32
    buffer = model.buffers[tensor.buffer]
    values = np.frombuffer(bytes(buffer.data), dtype=dtype)
    assert values.any(), "the chosen tensor is all zeros: negating it would break nothing"
    buffer.data = np.frombuffer((-values).astype(dtype).tobytes(), dtype=np.uint8)
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    tflite_path.write_bytes(bytes(builder.Output()))


def onnx_weighted_layers(onnx_path: Path) -> list[str]:
    """Conv/Gemm node names in graph order. The digits net is a plain chain, so the k-th weighted ONNX node is
    the k-th weighted TFLite op: an answer found without explain's own matching."""
    import onnx

    return [node.name for node in onnx.load(str(onnx_path)).graph.node if node.op_type in ("Conv", "Gemm")]


@pytest.mark.parametrize("what", ["weights", "bias"])
def test_explain_names_the_layer_that_was_broken(what, digits_android_export, tmp_path):
    model_dir = tmp_path / "my_mod"
    shutil.copytree(digits_android_export, model_dir)
    layers = onnx_weighted_layers(model_dir / "my_mod.onnx")
    broken = len(layers) // 2  # a 1x1 convolution in the middle of the network
    break_weighted_op(model_dir / "my_mod_int8.tflite", broken, what)

    result = CliRunner().invoke(main, ["explain", str(model_dir), "--artifact", "int8"])
    assert result.exit_code == 0, result.output
    report = json.loads((model_dir / "my_mod_int8.explain.json").read_text())
    assert report["jump"]["onnx_layer"] == layers[broken]
    assert report["jump"]["relative_error"] > 3 * report["jump"]["input_relative_error"]
    assert report["unmatched"] == []


def test_explain_prints_where_the_error_enters_and_saves_a_plot(digits_android_export, tmp_path):
    model_dir = tmp_path / "my_mod"
    shutil.copytree(digits_android_export, model_dir)
    layers = onnx_weighted_layers(model_dir / "my_mod.onnx")
    break_weighted_op(model_dir / "my_mod_int8.tflite", 3, "weights")
    plot = tmp_path / "layers.png"

    result = CliRunner().invoke(main, ["explain", str(model_dir), "--artifact", "my_mod_int8.tflite", "--plot",
                                       str(plot)])
    assert result.exit_code == 0, result.output
    assert any(line.startswith("error enters at layer") and layers[3] in line for line in result.output.splitlines())
    marked = [line for line in result.output.splitlines() if line.startswith(">>")]
    assert len(marked) == 1 and layers[3][-20:] in marked[0]
    from PIL import Image

    with Image.open(plot) as image:
        assert image.size[0] > 300 and image.size[1] > 150


def explained_json(export: Path, tmp_path: Path, artifact: str, samples: int = 20) -> dict:
    """explain --json on an untouched copy of the export."""
    model_dir = tmp_path / "my_mod"
    shutil.copytree(export, model_dir)
    result = CliRunner().invoke(main, ["explain", str(model_dir), "--artifact", artifact, "--json",
                                       "--samples", str(samples)])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_healthy_int8_is_compared_layer_by_layer_against_the_onnx_model(digits_android_export, tmp_path):
    report = explained_json(digits_android_export, tmp_path, "int8")
    compared = {layer["onnx_layer"] for layer in report["layers"]}
    assert set(onnx_weighted_layers(digits_android_export / "my_mod.onnx")) <= compared
    assert report["reference"].endswith("in ONNX Runtime")
    # The int8 recipe edits weights only by rounding them onto the int8 grid: a few % of their norm at most.
    weight_errors = [layer["weight_relative_error"] for layer in report["layers"] if layer["weight_relative_error"]]
    assert weight_errors and max(weight_errors) < 0.05
    assert report["layers"][-1]["cosine"] >= 0.99  # the int8 gate holds at the output, as the export found


def test_fp32_artifact_follows_the_onnx_model_everywhere(digits_android_export, tmp_path):
    report = explained_json(digits_android_export, tmp_path, "fp32")
    assert report["layers"] and all(layer["relative_error"] < 1e-4 for layer in report["layers"])
    assert report["jump"] is None  # float rounding is not an error entering anywhere


def test_ncnn_layers_pair_by_shape_and_order_and_extract_every_blob(digits_android_export, tmp_path):
    report = explained_json(digits_android_export, tmp_path, "my_mod_fp16.ncnn.param", samples=6)
    compared = [layer["onnx_layer"] for layer in report["layers"] if layer["onnx_op"].startswith(("Conv", "Gemm"))]
    assert compared == onnx_weighted_layers(digits_android_export / "my_mod.onnx") and report["unmatched"] == []
    assert {layer["artifact_op"].split()[0] for layer in report["layers"]} >= {"Convolution", "BinaryOp"}
    assert all(layer["weight_relative_error"] is None for layer in report["layers"])  # the .bin is not read
    assert 0 < report["layers"][-1]["relative_error"] < 0.01  # fp16 storage: rounding, nowhere near a fault


def test_unknown_artifact_is_an_input_error_listing_the_choices(digits_android_export):
    result = CliRunner().invoke(main, ["explain", str(digits_android_export), "--artifact", "int4"])
    assert result.exit_code == 2
    assert "no artifact 'int4'" in result.output and "my_mod_int8.tflite" in result.output


def test_nhwc_tensors_are_transposed_even_when_the_shape_fits_both_layouts():
    from core.artifact import to_onnx_shape
    from targets.tflite.explain import tflite_to_nchw

    nhwc = np.arange(16 * 16 * 16, dtype=np.float32).reshape(1, 16, 16, 16)
    assert np.array_equal(tflite_to_nchw(nhwc), nhwc.transpose(0, 3, 1, 2))
    assert to_onnx_shape(np.zeros((1, 1, 1, 8)), (1, 8)).shape == (1, 8)
    assert to_onnx_shape(np.zeros((1, 7)), (1, 8)) is None


def test_the_jump_is_the_first_layer_with_at_least_half_the_largest_increase():
    from validation.explain import LayerError, jump_depth

    def layer(depth, error, input_error):
        return LayerError(depth, f"layer{depth}", "Conv", "t", "CONV_2D", "t", (1,), 1.0, error, input_error, None)

    # The error enters at layer 1 (+0.3); layer 3 amplifies it further (+0.4) but is not where it came from.
    layers = (layer(0, 0.01, 0.0), layer(1, 0.31, 0.01), layer(2, 0.3, 0.31), layer(3, 0.7, 0.3))
    assert jump_depth(layers) == 1
    assert jump_depth((layer(0, 0.0, 0.0), layer(1, 2e-4, 1e-4))) is None  # float rounding marks nothing


def test_photos_given_with_val_are_what_explain_compares_on(digit_photo_folder):
    """An export that held out part of its --calib photos: explain compares on that held-out part, and with --val
    on the given photos instead (ten crops of each)."""
    from core.contract import InputContract
    from exporter.datasets import explain_samples

    contract = InputContract((1, 3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    data = {"calibration_source": str(digit_photo_folder), "validation_source": "held-out part of the calibration set"}
    photo_count = len([p for p in digit_photo_folder.rglob("*") if p.is_file()])
    held_out = explain_samples(data, contract, None, None)
    given = explain_samples(data, contract, None, str(digit_photo_folder))
    assert len(held_out) == 10 * (photo_count // 4)  # every 4th photo was held out of calibration
    assert len(given) == 10 * photo_count


def test_explain_says_per_output_where_each_output_gets_its_error(several_outputs_export, tmp_path):
    """The three-output digits model with its class head (the only FULLY_CONNECTED op) broken in the int8
    artifact: "scores" gets its error at that head; "features", which the head does not feed, does not."""
    from ai_edge_litert import schema_py_generated as schema

    _, export = several_outputs_export
    model_dir = tmp_path / export.name
    shutil.copytree(export, model_dir)
    int8 = model_dir / f"{export.name}_int8.tflite"
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(int8.read_bytes(), 0))
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    weighted = [codes[op.opcodeIndex] for op in model.subgraphs[0].operators
                if codes[op.opcodeIndex] in {getattr(schema.BuiltinOperator, name) for name in WEIGHTED_TFLITE_OPS}]
    break_weighted_op(int8, weighted.index(schema.BuiltinOperator.FULLY_CONNECTED), "weights")

    result = CliRunner().invoke(main, ["explain", str(model_dir), "--artifact", "int8",
                                       "--samples", "10"])
    assert result.exit_code == 0, result.output
    report = json.loads((model_dir / f"{export.name}_int8.explain.json").read_text())
    outputs = {output["output"]: output for output in report["outputs"]}
    assert list(outputs) == ["scores", "features", "detections"]
    layers = report["layers"]
    scores, features = outputs["scores"], outputs["features"]
    assert layers[scores["layer"]]["onnx_op"] == "Gemm" and layers[scores["jump_depth"]]["onnx_op"] == "Gemm"
    # Measured 1.92 for the scores (negated weights) and 0.055 for the feature map (int8 rounding alone), on 10
    # samples; the bounds leave a factor of 4 and of 1.8.
    assert scores["relative_error"] > 0.5
    assert features["jump_depth"] is None or layers[features["jump_depth"]]["onnx_op"] != "Gemm"
    assert features["relative_error"] < 0.1
    assert "output scores: relative error" in result.output
