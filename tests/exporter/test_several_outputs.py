"""Models with several outputs: named from what forward() returns, carried through every target in order and
layout, and judged output by output."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from core.errors import InputError
from core.parity import DEFAULT_THRESHOLDS, compare_outputs, mixed_range_fields
from targets import REGISTRY

OUTPUTS = [{"name": "scores", "shape": [1, 10], "kind": "logits"},
           {"name": "features", "shape": [1, 32, 4, 4], "kind": "tensor"},
           {"name": "detections", "shape": [1, 16, 9], "kind": "tensor"}]
NAMES = [output["name"] for output in OUTPUTS]


def test_a_model_returning_a_dict_exports_to_every_target_with_parity_per_output(several_outputs_export):
    result, model_dir = several_outputs_export
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["outputs"] == OUTPUTS
    artifacts = {(a["runtime"], a["precision"]): a for a in manifest["artifacts"]}
    assert set(REGISTRY) == {runtime for runtime, _ in artifacts}  # --target all: every registered runtime
    assert ("tflite", "int8") in artifacts
    for (runtime, precision), artifact in artifacts.items():
        per_output = artifact["parity"]["per_output"]
        assert list(per_output) == NAMES, (runtime, precision)
        assert all(each["passed"] for each in per_output.values()), (runtime, precision)
        # The artifact's figures are its worst output's.
        assert artifact["parity"]["cosine"] == min(each["cosine"] for each in per_output.values())
        # One score per class: top-1 is judged on the scores; a feature map has no classes.
        assert per_output["scores"]["top1_agreement"] is not None and per_output["scores"]["kind"] == "logits"
        assert per_output["features"]["top1_agreement"] is None and per_output["features"]["kind"] == "tensor"
        assert all(each["snr_db"] > 10 for each in per_output.values()), (runtime, precision)
    with zipfile.ZipFile(model_dir / "bundle.zip") as bundle:
        assert json.loads(bundle.read("input_contract.json"))["outputs"] == OUTPUTS
        kotlin = bundle.read("android/LiteRtClassifier.kt").decode()
        cpp = bundle.read("android/ncnn_classifier.cpp").decode()
        swift = bundle.read("ios/CoreMLClassifier.swift").decode()
    # The snippets read every output by the model's name, from where each runtime put it.
    tflite = next(a for a in manifest["artifacts"] if a["path"] in kotlin)
    for entry in tflite["details"]["outputs"]:
        assert f'Output("{entry["name"]}", {entry["index"]},' in kotlin
    ncnn = next(a for a in manifest["artifacts"] if a["path"] in cpp)
    pairs = ", ".join(f'{{"{name}", "{blob}"}}' for name, blob in ncnn["details"]["output_blobs"].items())
    assert pairs in cpp and list(ncnn["details"]["output_blobs"]) == NAMES
    assert 'by Core ML output name: "scores", "features", "detections"' in swift


def test_boxes_and_scores_in_one_output_keep_their_own_int8_scales_in_the_tflite_model(several_outputs_export):
    """"detections" holds box coordinates (spread 8 px) and scores (spread 0.2) in one tensor: one int8 scale over
    it would have steps of 0.33, and its score fields correlate 0.906 with the float model's (measured with the
    handling removed). The recipe keeps the op joining them in float, each input at its own scale, and every field
    passes."""
    _, model_dir = several_outputs_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    int8 = next(a for a in manifest["artifacts"] if a["runtime"] == "tflite" and a["precision"] == "int8")
    kept = int8["details"]["int8_recipe"]["float_outputs"]
    assert len(kept) == 1 and "kept in float" in kept[0]["why"]
    assert int8["details"]["ops"]["DEQUANTIZE"] >= 2  # boxes and scores each leave int8 at their own scale
    assert int8["parity"]["per_output"]["detections"]["passed"]
    report = (model_dir / "report.md").read_text()
    assert all(f"output {name}" in report for name in NAMES)


def test_tflite_outputs_are_matched_by_value_and_restored_to_the_onnx_layout(several_outputs_export):
    from targets.tflite.outputs import AS_IS, CHANNELS_LAST
    from targets.tflite.runner import LiteRTRunner

    _, model_dir = several_outputs_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    fp32 = next(a for a in manifest["artifacts"] if a["runtime"] == "tflite" and a["precision"] == "fp32")
    mapping = {entry["name"]: entry["layout"] for entry in fp32["details"]["outputs"]}
    assert mapping == {"scores": AS_IS, "features": CHANNELS_LAST, "detections": AS_IS}
    samples = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    path = model_dir / fp32["path"]
    outputs = LiteRTRunner(path, outputs=fp32["details"]["outputs"]).run_outputs(samples)
    assert outputs["features"].shape == (2, 32, 4, 4)
    # Negative control: the same output read without the recorded layout is not the ONNX model's tensor.
    as_is = [dict(entry, layout=AS_IS) for entry in fp32["details"]["outputs"]]
    assert LiteRTRunner(path, outputs=as_is).run_outputs(samples)["features"].shape == (2, 4, 4, 32)


def test_labels_for_a_model_with_several_outputs_are_refused():
    from exporter.pipeline import _check_labels

    reference = {"scores": np.zeros((2, 10)), "features": np.zeros((2, 32, 4, 4))}
    with pytest.raises(InputError) as error:
        _check_labels(tuple("0123456789"), reference)
    assert "--labels names the classes of one output, and the model has 2 (scores, features)" in error.value.message
    _check_labels(tuple("0123456789"), {"scores": reference["scores"]})  # one output: its classes


@pytest.mark.parametrize("returned, names", [
    ("tensor", ("output",)),
    ("tuple", ("output_0", "output_1")),
    ("dict", ("boxes", "scores")),
])
def test_outputs_are_named_from_what_forward_returns(returned, names):
    import torch

    from exporter.onnx_stage import output_names

    boxes, scores = torch.zeros(1, 4), torch.zeros(1, 3)
    result = {"tensor": boxes, "tuple": (boxes, scores), "dict": {"boxes": boxes, "scores": scores}}[returned]
    assert output_names(result) == names


@pytest.mark.parametrize("returned, message", [
    ("nested", "the model's outputs output_1 (tuple) are not tensors"),
    ("number", "the model returns a float, not tensors"),
    ("empty", "the model returns an empty tuple"),
    ("bad key", "the model's output keys 'box es' cannot name tensors"),
])
def test_outputs_that_cannot_be_named_tensors_are_refused(returned, message):
    import torch

    from exporter.onnx_stage import output_names

    boxes = torch.zeros(1, 4)
    result = {"nested": (boxes, (boxes, boxes)), "number": 1.0, "empty": (), "bad key": {"box es": boxes}}[returned]
    with pytest.raises(InputError) as error:
        output_names(result)
    assert message in error.value.message


def _detector_outputs(samples: int = 40, anchors: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    boxes = rng.uniform(0, 96, (samples, anchors, 4))  # pixels
    scores = 1 / (1 + np.exp(-rng.standard_normal((samples, anchors, 3))))  # 0..1
    return {"boxes": boxes.astype(np.float32), "scores": scores.astype(np.float32)}


def _int8(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Fake int8 over [low, high] as one tensor scale."""
    step = (high - low) / 255
    return (np.round((values - low) / step) * step + low).astype(np.float32)


def test_each_output_is_judged_on_its_own_and_a_failure_names_it():
    reference = _detector_outputs()
    gate = DEFAULT_THRESHOLDS["int8"]
    own_scales = {name: _int8(values, values.min(), values.max()) for name, values in reference.items()}
    assert compare_outputs(reference, own_scales, gate).passed
    broken = {**own_scales, "scores": np.zeros_like(reference["scores"])}
    result = compare_outputs(reference, broken, gate)
    assert not result.passed
    assert {failure.split(":")[0] for failure in result.failures} == {"scores"}
    assert dict(result.per_output)["boxes"].passed
    missing = compare_outputs(reference, {"boxes": own_scales["boxes"], "other": own_scales["scores"]}, gate)
    assert missing.failures == ("outputs scores missing; the artifact gives boxes, other",)


def test_boxes_and_scores_sharing_one_int8_scale_fail_naming_the_field_and_the_fix():
    parts = _detector_outputs()
    reference = {"detections": np.concatenate([parts["boxes"], parts["scores"]], axis=-1)}
    gate = DEFAULT_THRESHOLDS["int8"]
    values = reference["detections"]
    one_scale = {"detections": _int8(values, values.min(), values.max())}
    result = compare_outputs(reference, one_scale, gate)
    # The tensor's cosine, carried by the boxes, passes; the scores (fields 4-6) are a few steps of 0.38.
    assert result.cosine > gate.cosine
    assert not result.passed
    assert "field" in result.failures[0] and "return them as separate outputs" in result.failures[0]
    # Seen before quantizing: the scores spread (std 0.2) less than 4 int8 steps of the whole tensor's range (96/255).
    assert mixed_range_fields(values)[0] in (4, 5, 6)
    assert mixed_range_fields(parts["boxes"]) is None and mixed_range_fields(parts["scores"]) is None
    # Negative control: each field on its own scale passes the same check.
    per_field = np.concatenate([_int8(values[..., k:k + 1], values[..., k].min(), values[..., k].max())
                                for k in range(values.shape[-1])], axis=-1)
    assert compare_outputs(reference, {"detections": per_field}, gate).passed
