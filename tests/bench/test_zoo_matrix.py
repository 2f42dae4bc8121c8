"""The zoo matrix (bench/zoo_matrix.py) and the digit-trained zoo weights (exporter/zoo/digits.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import REPO

sys.path.insert(0, str(REPO / "bench"))

import zoo_matrix  # noqa: E402

from exporter.zoo import (  # noqa: E402
    CLASSIFIERS,
    ZOO,
    digits,
)

SHUFFLES = {"shufflenet_v2_x0_5": 16, "shufflenet_v2_x1_0": 16, "shufflenet_v1_g3": 16}


def _manifest(passed: bool = True) -> dict:
    def artifact(runtime, precision, cosine, top1, ops):
        failures = [] if passed or precision != "int8" else ["top-1 agreement 0.500 < 0.95"]
        return {
            "runtime": runtime, "precision": precision, "total_bytes": 2_500_000,
            "parity": {"cosine": cosine, "top1_agreement": top1, "passed": not failures, "failures": failures},
            "details": {"ops": ops} if ops is not None else {},
        }

    return {
        "gates_passed": passed,
        "stage_seconds": {"export ONNX": 2.0, "simplify and check ONNX": 1.0, "convert tflite": 100.0,
                          "convert ncnn": 5.0},
        "artifacts": [
            artifact("onnx", "fp32", 1.0, 1.0, None),
            artifact("tflite", "int8", 0.995, 0.97 if passed else 0.5, {"CONV_2D": 10, "TRANSPOSE": 2, "PAD": 3,
                                                                         "PADV2": 1}),
            artifact("ncnn", "fp16", 0.9999, 1.0, {"Convolution": 10, "Padding": 0}),
        ],
    }


def _write_export(model_dir: Path, manifest: dict) -> None:
    model_dir.mkdir(parents=True)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


def test_the_matrix_reads_finished_exports_instead_of_exporting_again(tmp_path, monkeypatch):
    _write_export(tmp_path / "squeezenet1_1", _manifest())
    monkeypatch.setattr(zoo_matrix.subprocess, "run", lambda *a, **k: pytest.fail("exported again"))

    exit_code = zoo_matrix.main(["--models", "squeezenet1_1", "--out", str(tmp_path)])

    assert exit_code == 0
    rows = json.loads((tmp_path / "zoo_matrix.json").read_text())["rows"]
    assert [row["artifact"] for row in rows] == ["onnx fp32", "tflite int8", "ncnn fp16"]
    tflite = rows[1]
    assert (tflite["transposes"], tflite["pads"], tflite["convert_seconds"]) == (2, 4, 100.0)
    assert tflite["export_seconds"] == pytest.approx(108.0)  # a hand-made export: the manifest's stage times
    assert rows[0]["transposes"] is None and rows[0]["convert_seconds"] == 3.0
    markdown = (tmp_path / "zoo_matrix.md").read_text()
    assert "| squeezenet1_1 | digits (trained) | tflite int8 | 0.995000 | 0.970 |" in markdown


def test_a_failed_gate_fails_the_matrix_and_is_named_in_the_table(tmp_path, capsys):
    _write_export(tmp_path / "squeezenet1_1", _manifest(passed=False))

    exit_code = zoo_matrix.main(["--models", "squeezenet1_1", "--out", str(tmp_path)])

    assert exit_code == 1
    assert "FAIL: top-1 agreement 0.500 < 0.95" in capsys.readouterr().out


def test_before_and_after_columns_come_from_an_earlier_table(tmp_path, capsys):
    _write_export(tmp_path / "before" / "squeezenet1_1", _manifest(passed=False))
    zoo_matrix.main(["--models", "squeezenet1_1", "--out", str(tmp_path / "before")])
    _write_export(tmp_path / "after" / "squeezenet1_1", _manifest())
    capsys.readouterr()

    zoo_matrix.main(["--models", "squeezenet1_1", "--out", str(tmp_path / "after"),
                     "--before", str(tmp_path / "before" / "zoo_matrix.json")])

    table = capsys.readouterr().out.splitlines()
    assert "top-1 before" in table[0] and "TRANSPOSE before" in table[0]
    tflite_line = next(line for line in table if "tflite int8" in line)
    assert tflite_line.split()[-6:] == ["0.995000", "0.500", "2.50", "2", "4", "108"]


def test_model_patterns_select_zoo_models_and_unknown_ones_are_refused():
    assert zoo_matrix.select_models(["shufflenet_v1_*"]) == [
        "shufflenet_v1_g1", "shufflenet_v1_g2", "shufflenet_v1_g3", "shufflenet_v1_g4", "shufflenet_v1_g8"]
    assert zoo_matrix.select_models(None) == list(ZOO)
    with pytest.raises(SystemExit):
        zoo_matrix.select_models(["resnet50"])


def test_every_zoo_classifier_has_trained_weights_planned_and_v1_resolutions_share_their_width():
    assert {digits.weights_set(name) for name in CLASSIFIERS} == set(digits.TRAINING_PLANS)
    assert digits.weights_set("mobilenet_v1_0_5_192") == "mobilenet_v1_0_5_128"
    assert digits.export_size("mobilenet_v1_0_5_192") == 192
    assert digits.export_size("mnasnet1_0") == digits.TRAINING_PLANS["mnasnet1_0"].input_size


@pytest.mark.parametrize("name", digits.STORED_IN_REPOSITORY)
def test_trained_zoo_weights_load_with_a_ten_class_head_and_recognize_held_out_digits(name):
    """The stored weights are what their training recorded: zoo:NAME --weights loads them (the
    classifier resized to the checkpoint's 10 classes) and they read digits never seen in training."""
    import torch

    from exporter.sources import load_model

    record = digits.read_records()[name]
    loaded = load_model(f"zoo:{name}", str(digits.trained_weights(name)))
    photos, labels = digits.digit_photos(record["input_size"])
    held_out = photos[digits.TRAIN_COUNT:]
    inputs = torch.from_numpy(digits.model_inputs(held_out, digits.contract_for(name)))
    with torch.no_grad():
        predicted = torch.cat([loaded.module(chunk).argmax(1) for chunk in inputs.split(100)]).numpy()
    accuracy = float((predicted == labels[digits.TRAIN_COUNT:]).mean())
    assert predicted.max() < 10
    assert accuracy >= 0.9
    assert accuracy == pytest.approx(record["held_out_accuracy"], abs=0.02)  # float16 storage moves a few digits


def test_parity_data_holds_training_digits_for_calibration_and_held_out_digits_for_validation(tmp_path):
    data = digits.write_parity_data("squeezenet1_1", tmp_path)
    calibration, validation = np.load(data.calibration), np.load(data.validation)
    photos, _ = digits.digit_photos(digits.TRAINING_PLANS["squeezenet1_1"].input_size)

    assert calibration.dtype == np.uint8 and calibration.shape[1:] == photos.shape[1:]
    assert len(validation) == len(photos) - digits.TRAIN_COUNT
    np.testing.assert_array_equal(validation, photos[digits.TRAIN_COUNT:])
    assert len(calibration) <= digits.TRAIN_COUNT


def test_a_zoo_model_exports_by_the_command_line_into_one_passing_row_per_artifact(tmp_path, monkeypatch):
    """The matrix's fast form, for `make test`: one zoo model with channel shuffles, through the same child
    `mobile-export export` the slow run starts, to ncnn (seconds; TFLite's conversion takes minutes, and its
    lean shuffles have their fast test in tests/graph/test_lean_graph.py). Its packaged digit weights, parity
    on the held-out digits, every gate passed, and the shuffles kept as ShuffleChannel, no Permute."""
    monkeypatch.setenv("MOBILE_EXPORT_CACHE", str(tmp_path / "cache"))  # the digit photos, written once

    exit_code = zoo_matrix.main(["--models", "shufflenet_v2_x0_5", "--target", "ncnn", "--out", str(tmp_path)])

    rows = json.loads((tmp_path / "zoo_matrix.json").read_text())["rows"]
    assert exit_code == 0, rows
    assert [row["artifact"] for row in rows] == ["onnx fp32", "ncnn fp32", "ncnn fp16", "ncnn int8"]
    assert all(row["passed"] and row["weights"] == "digits (trained)" for row in rows), rows
    manifest = json.loads((tmp_path / "shufflenet_v2_x0_5" / "manifest.json").read_text())
    assert {artifact["parity"]["samples"] for artifact in manifest["artifacts"]} == {1797 - digits.TRAIN_COUNT}
    ncnn_ops = [artifact["details"]["ops"] for artifact in manifest["artifacts"] if artifact["runtime"] == "ncnn"]
    assert all(ops["ShuffleChannel"] == SHUFFLES["shufflenet_v2_x0_5"] for ops in ncnn_ops)
    assert [row["transposes"] for row in rows] == [None, 0, 0, 0]


@pytest.mark.slow
def test_representative_zoo_models_export_to_android_with_parity_and_lean_shuffles(tmp_path):
    """The matrix on three families, with trained weights: a ShuffleNet (channel shuffle), a MobileNetV3 (SE,
    hard-swish), a SqueezeNet (fire modules). Every artifact passes its gate; the TFLite ShuffleNet graphs keep
    no TRANSPOSE (the issue allows one per shuffle; the lean graph needs none)."""
    models = ["shufflenet_v2_x0_5", "mobilenet_v3_small", "squeezenet1_1"]

    exit_code = zoo_matrix.main(["--models", *models, "--out", str(tmp_path)])

    rows = json.loads((tmp_path / "zoo_matrix.json").read_text())["rows"]
    assert exit_code == 0, [row for row in rows if not row["passed"]]
    assert {row["model"] for row in rows} == set(models)
    assert {row["artifact"] for row in rows} >= {"onnx fp32", "tflite fp32", "tflite fp16", "tflite int8",
                                                 "ncnn fp32", "ncnn fp16"}
    for row in rows:
        if row["artifact"].startswith("tflite") and row["model"] in SHUFFLES:
            assert row["transposes"] == 0, row


def test_a_zoo_model_without_published_weights_exports_with_its_digit_weights_and_digits(monkeypatch, tmp_path):
    """`--model zoo:NAME` alone: the digit-trained weights, 10 digit labels, the weights' input size, and
    calibration / validation on training / held-out digits; any of them given by the user wins."""
    from exporter.config import build_spec
    from exporter.sources import load_model

    monkeypatch.setenv("MOBILE_EXPORT_CACHE", str(tmp_path))
    spec = build_spec({"model": "zoo:shufflenet_v2_x0_5"})
    loaded = load_model(spec.model, spec.weights)

    assert spec.contract.input_shape == (1, 3, 96, 96)
    assert (Path(spec.calib).parent, Path(spec.val).parent) == (tmp_path / "zoo-weights" / "data",) * 2
    assert len(np.load(spec.val)) == 1797 - digits.TRAIN_COUNT
    assert loaded.weights == str(digits.trained_weights("shufflenet_v2_x0_5"))
    assert loaded.labels == digits.LABELS
    assert build_spec({"model": "zoo:mobilenet_v1_0_5_160"}).contract.input_shape == (1, 3, 160, 160)
    assert build_spec({"model": "zoo:shufflenet_v2_x0_5", "calib": "photos"}).val is None
    own_weights = build_spec({"model": "zoo:shufflenet_v2_x0_5", "weights": "mine.safetensors"})
    assert (own_weights.calib, own_weights.contract.input_shape) == ("builtin", (1, 3, 224, 224))
    imagenet = build_spec({"model": "zoo:mobilenet_v2"})
    assert (imagenet.calib, load_model("zoo:mobilenet_v2").labels[0]) == ("builtin", "tench")


def test_weights_missing_from_package_and_cache_are_trained_once_and_cached(monkeypatch, tmp_path):
    """A weight set the package does not hold is trained on first use, into the cache, with its record."""
    calls = []

    def fake_training(name, weights_dir=None, report_every=0):
        calls.append(name)
        path = digits.trained_weights(name, weights_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
        return digits.TrainingRecord(name, digits.DATASET, 10, 96, 1, 1, 0.1, 0.1, 0.9, path.name, 7)

    monkeypatch.setenv("MOBILE_EXPORT_CACHE", str(tmp_path))
    monkeypatch.setattr(digits, "train_and_save", fake_training)

    first = digits.ensure_trained("mnasnet1_0")
    again = digits.ensure_trained("mnasnet1_0")

    assert first == again == tmp_path / "zoo-weights" / "mnasnet1_0_digits.safetensors"
    assert calls == ["mnasnet1_0"]
    assert digits.read_records(tmp_path / "zoo-weights")["mnasnet1_0"]["held_out_accuracy"] == 0.9


def test_exported_only_tabulates_finished_exports_and_starts_none(tmp_path, monkeypatch):
    _write_export(tmp_path / "squeezenet1_1", _manifest())
    monkeypatch.setattr(zoo_matrix.subprocess, "run", lambda *a, **k: pytest.fail("exported"))

    exit_code = zoo_matrix.main(["--models", "squeezenet*", "--out", str(tmp_path), "--exported-only"])

    rows = json.loads((tmp_path / "zoo_matrix.json").read_text())["rows"]
    assert exit_code == 0 and {row["model"] for row in rows} == {"squeezenet1_1"}


def test_the_onnx2tf_by_hand_table_is_the_before_of_the_int8_rows(tmp_path, capsys, monkeypatch):
    import onnx2tf_by_hand

    _write_export(tmp_path / "squeezenet1_1", _manifest())
    by_hand = zoo_matrix.MatrixRow("squeezenet1_1", "digits (trained)", "tflite int8", 0, 0.984, 0.77, False,
                                   2.9, 41.0, 41.0, 12, 3, "top-1 agreement 0.7700 (77 of 100 samples) < 0.95")
    monkeypatch.setattr(onnx2tf_by_hand, "by_hand_row", lambda model, weights, model_dir: by_hand)
    assert onnx2tf_by_hand.main(["--out", str(tmp_path)]) == 0
    capsys.readouterr()

    zoo_matrix.main(["--models", "squeezenet1_1", "--out", str(tmp_path), "--exported-only",
                     "--before", str(tmp_path / "onnx2tf_by_hand.json")])

    table = capsys.readouterr().out.splitlines()
    assert next(line for line in table if "tflite int8" in line).split()[-6:] == [
        "0.984000", "0.770", "2.90", "12", "3", "41"]
    assert next(line for line in table if "ncnn fp16" in line).split()[-6:] == ["-"] * 6
