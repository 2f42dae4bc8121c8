"""The whole pipeline on a user's trained model that lives outside this repository."""
from __future__ import annotations

import hashlib
import json
import sys

import pytest

from tests.helpers import DIGITS_CONTRACT, run_cli


@pytest.fixture(scope="module")
def android_export(digits_android_run, user_package):
    """The session's android export: (CompletedProcess, OUT/my_mod, the working folder's names before, that folder)."""
    run = digits_android_run
    return run.result, run.model_dir, run.working_folder_before, user_package


def test_android_export_exits_0_with_every_artifact(android_export):
    result, model_dir, _, _ = android_export
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    produced = {(a["runtime"], a["precision"]) for a in manifest["artifacts"]}
    assert produced == {("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"),
                        ("ncnn", "fp32"), ("ncnn", "fp16"), ("ncnn", "int8")}
    assert manifest["gates_passed"] is True
    assert all(a["target"] == "android" for a in manifest["artifacts"])


def test_manifest_checksums_match_the_files(android_export):
    _, model_dir, _, _ = android_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        for record in artifact["files"]:
            data = (model_dir / record["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["bytes"]
        assert artifact["sha256"] == artifact["files"][0]["sha256"]


def test_parity_meets_the_precision_thresholds(android_export):
    _, model_dir, _, _ = android_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    for artifact in manifest["artifacts"]:
        parity = artifact["parity"]
        assert parity["passed"], artifact
        minimum = {"fp32": 0.99999, "fp16": 0.999, "int8": 0.99}[artifact["precision"]]
        assert parity["cosine"] >= minimum
        assert parity["samples"] >= 15
        if artifact["precision"] == "int8":
            assert parity["top1_agreement"] >= 0.95


def test_int8_bias_correction_is_kept_only_when_it_leads_on_photos_it_was_not_tuned_on(android_export):
    _, model_dir, _, _ = android_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    (int8,) = [a for a in manifest["artifacts"] if a["runtime"] == "tflite" and a["precision"] == "int8"]
    recipe = int8["details"]["int8_recipe"]
    ranges = recipe["activation_ranges"]
    method, preferred = ranges["method"], recipe["steps"]["range_methods"][0]
    assert set(ranges["cosine"]) == set(recipe["steps"]["range_methods"])  # every method was scored
    if method != preferred:  # a later method replaces the preferred one only on a lead
        assert ranges["cosine"][method] > ranges["cosine"][preferred]
    scores = recipe["bias_correction"]["cross_fitted_cosine"]
    assert set(scores) == {method, f"{method} + bias correction"}  # both candidates were scored
    # Kept only on a lead: applied with a lower cross-fitted score would be a step that hurt.
    if recipe["bias_correction"]["applied"]:
        assert scores[f"{method} + bias correction"] > scores[method]
    # The scored samples are the two folds' calibration samples, each scored by a model not corrected on it.
    assert 0 < ranges["scored_on"] <= recipe["calibration_samples"]
    assert ranges["description"] and "standard errors" in ranges["chosen_by"]
    assert recipe["grid_rounded_layers"] > 0


def test_manifest_records_the_input_contract_and_tools(android_export):
    _, model_dir, _, _ = android_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["input"]["input_shape"] == [1, 3, 32, 32]
    assert manifest["input"]["mean"] == [0.5, 0.5, 0.5] and manifest["input"]["std"] == [0.25, 0.25, 0.25]
    assert manifest["parity_reference"] == "pytorch"
    for tool in ("torch", "onnx", "onnx2tf", "ncnn", "pnnx", "tensorflow"):
        assert manifest["tools"].get(tool, "not installed") != "not installed", tool


def test_summary_is_printed_and_nothing_is_left_in_the_working_folder(android_export):
    result, model_dir, before, cwd = android_export
    assert "my_mod_int8.tflite" in result.stdout and "cosine" in result.stdout
    assert "built-in sample photos" not in result.stderr  # calibrated on the user's own photos
    after = sorted(p.name for p in cwd.iterdir() if p.name != "__pycache__")
    assert after == [name for name in before if name != "__pycache__"]
    assert not list(model_dir.glob(".staging-*"))


def test_failed_gate_exits_1_and_names_the_artifact(user_package, digit_photo_folder, tmp_path):
    config = tmp_path / "export.toml"
    config.write_text("[parity.fp16]\ncosine = 1.0\n")  # fp16 storage can never be bit-exact
    result = run_cli(
        ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT, "--calib", str(digit_photo_folder),
         "--target", "ncnn", "--out", str(tmp_path / "out"), "--config", str(config)],
        cwd=user_package,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "parity gate failed" in result.stderr and "ncnn fp16" in result.stderr and "< 1.0" in result.stderr
    manifest = json.loads((tmp_path / "out" / "my_mod" / "manifest.json").read_text())
    assert manifest["gates_passed"] is False


def test_an_export_on_the_built_in_photos_says_to_calibrate_on_your_own(user_package, tmp_path):
    result = run_cli(
        ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT, "--target", "ncnn", "--out", str(tmp_path / "out")],
        cwd=user_package,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "built-in sample photos, not photos like your app's: pass --calib" in result.stderr


@pytest.mark.parametrize("form", ["torchscript", "exported_program", "onnx"])
def test_other_model_file_forms_export_to_ncnn_with_parity(form, user_package, digit_photo_folder, tmp_path):
    import torch

    sys.path.insert(0, str(user_package))
    try:
        from my_pkg import my_mod

        model = my_mod.build().eval()
    finally:
        sys.path.remove(str(user_package))
    example = torch.zeros(1, 3, 32, 32)
    if form == "torchscript":
        source = tmp_path / "digits.pt"
        torch.jit.save(torch.jit.trace(model, example), str(source))
    elif form == "exported_program":
        source = tmp_path / "digits.pt2"
        torch.export.save(torch.export.export(model, (example,)), str(source))
    else:
        source = tmp_path / "digits.onnx"
        torch.onnx.export(model, (example,), str(source), dynamo=False, opset_version=17)
    # The ONNX form also goes to TFLite, with a relative --out: converters run in their own folders.
    target = "android" if form == "onnx" else "ncnn"
    result = run_cli(
        ["--model", str(source), *DIGITS_CONTRACT, "--calib", str(digit_photo_folder), "--target", target,
         "--out", "out"],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((tmp_path / "out" / "digits" / "manifest.json").read_text())
    expected_runtimes = {"onnx", "ncnn", "tflite"} if form == "onnx" else {"onnx", "ncnn"}
    assert {a["runtime"] for a in manifest["artifacts"]} == expected_runtimes
    assert all(a["parity"]["passed"] for a in manifest["artifacts"])
    expected_reference = "onnxruntime on the source ONNX file" if form == "onnx" else "pytorch"
    assert manifest["parity_reference"] == expected_reference
