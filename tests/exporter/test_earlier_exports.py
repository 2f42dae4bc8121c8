"""Exports of different targets into one folder add up: one manifest, report and bundle describe every
artifact in it, and nothing another model, another calibration or a hand edit left there is listed as this
export's."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from core.errors import InputError
from core.manifest import read_manifest, sha256_of
from exporter.cli import main
from exporter.earlier import EDITED, UNLISTED, refuse_leftovers, survey
from exporter.publish import exclusive_staging, publishing
from targets import get_target
from tests.helpers import DIGIT_NAMES, DIGITS_CONTRACT, run_cli, substitute_tflite_converter

MODEL = ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT]
# What a model folder holds besides its artifacts: the manifest lists artifacts, not these.
NOT_ARTIFACTS = {"manifest.json", "labels.txt", "logs", "report.html", "report.md", "report_plots", "bundle.zip"}


def copied(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of an export folder as OUT/my_mod under tmp_path (tests change it)."""
    copy = tmp_path / "out" / "my_mod"
    shutil.copytree(model_dir, copy)
    return copy


def digit_labels(folder: Path) -> Path:
    """The labels the session's exports were given."""
    path = folder / "digit_names.txt"
    path.write_text("\n".join(DIGIT_NAMES) + "\n")
    return path


def artifact_files(model_dir: Path) -> set[str]:
    """Every file in the folder that is not a record of the export, as manifest paths (inside packages too)."""
    return {path.relative_to(model_dir).as_posix() for path in model_dir.rglob("*")
            if path.is_file() and not path.name.startswith(".")
            and path.relative_to(model_dir).parts[0] not in NOT_ARTIFACTS}


def listed_files(model_dir: Path, manifest: dict) -> set[str]:
    """The files the manifest's artifacts cover, an .mlpackage's files included."""
    listed = set()
    for artifact in manifest["artifacts"]:
        for record in artifact["files"]:
            path = model_dir / record["path"]
            inside = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
            listed |= {p.relative_to(model_dir).as_posix() for p in inside}
    return listed


def by_name(manifest: dict) -> dict[str, dict]:
    return {Path(a["path"]).name: a for a in manifest["artifacts"]}


# ---- the session's ios export, made into a copy of its android export (tests/conftest.py) ---------------


def test_ios_after_android_lists_every_artifact_with_its_parity_and_reuse_key(ios_export,
                                                                             digits_android_export):
    result, model_dir = ios_export
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert [(a["runtime"], a["precision"]) for a in manifest["artifacts"]] == [
        ("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"), ("ncnn", "fp32"),
        ("ncnn", "fp16"), ("ncnn", "int8"), ("coreml", "fp32"), ("coreml", "fp16"), ("coreml", "int8"), ("coreml", "w8a8"),
        ("coreml", "palette6")]
    assert manifest["gates_passed"] is True and manifest["failed_targets"] == []
    android = by_name(json.loads((digits_android_export / "manifest.json").read_text()))
    for name, artifact in by_name(manifest).items():
        assert artifact["parity"]["passed"] and artifact["parity"]["samples"] >= 15, name
        conversion = artifact["details"].get("conversion")
        if artifact["runtime"] in ("tflite", "ncnn"):  # kept, under the key the android export made them with
            assert conversion["kept"] is True and conversion["reused"] is True
            assert conversion["key"] == android[name]["details"]["conversion"]["key"]
            assert artifact["sha256"] == android[name]["sha256"] and artifact["target"] == "android"
        elif artifact["runtime"] == "coreml":
            assert conversion["kept"] is False and conversion["reused"] is False and artifact["target"] == "ios"
    assert artifact_files(model_dir) == listed_files(model_dir, manifest)


def test_ios_after_android_says_which_artifacts_it_kept_and_that_it_measured_them_again(ios_export):
    result, _ = ios_export
    assert ("kept: my_mod_fp32.tflite, my_mod_fp16.tflite, my_mod_int8.tflite, my_mod_fp32.ncnn.param, "
            "my_mod_fp16.ncnn.param, my_mod_int8.ncnn.param from an earlier export") in result.stdout
    assert "their parity was measured again by this export" in result.stdout
    kept_rows = [line for line in result.stdout.splitlines() if line.endswith("pass  kept")]
    assert len(kept_rows) == 6 and not any("mlpackage" in row for row in kept_rows)


def test_ios_after_android_bundles_and_reports_every_artifact(ios_export):
    _, model_dir = ios_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    with zipfile.ZipFile(model_dir / "bundle.zip") as bundle:
        names = set(bundle.namelist())
        assert listed_files(model_dir, manifest) <= names
        for artifact in manifest["artifacts"]:
            if not (model_dir / artifact["path"]).is_dir():
                assert hashlib.sha256(bundle.read(artifact["path"])).hexdigest() == artifact["sha256"]
        contract = json.loads(bundle.read("input_contract.json"))
        readme = bundle.read("README.md").decode()
    assert set(contract["per_artifact"]) == set(by_name(manifest))
    assert {"android/LiteRtClassifier.kt", "android/ncnn_classifier.cpp", "ios/CoreMLClassifier.swift"} <= names
    assert "no Core ML snippet" not in readme and "no LiteRT" not in readme
    markdown = (model_dir / "report.md").read_text()
    for name, artifact in by_name(manifest).items():
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {name} |"))
        key = artifact["details"].get("conversion", {}).get("key", "")[:12]
        made = "kept from an earlier export" if artifact["runtime"] in ("tflite", "ncnn") else \
            "converted" if artifact["runtime"] == "coreml" else "exported"
        assert f"| {made}" in row and key in row and row.endswith("| pass |"), row
    assert "Kept from an earlier export of other targets" in markdown


# ---- another model with the same name --------------------------------------------------------------------------


def test_ncnn_export_of_other_weights_refuses_the_android_artifacts_of_the_first_then_removes_them(
    digits_android_export, user_package, digit_photo_folder, tmp_path
):
    """Model A exported for android; model B, the same module with other weights, exported for ncnn into the
    same folder. A's TFLite files would stay beside B's ncnn ones: they must never be listed as B's."""
    import torch

    model_dir = copied(digits_android_export, tmp_path)
    weights = torch.load(user_package / "my_pkg" / "digits_net.pt", weights_only=True)
    weights["head.weight"] = weights["head.weight"] * 1.5
    torch.save(weights, tmp_path / "other_weights.pt")
    args = [*MODEL, "--weights", str(tmp_path / "other_weights.pt"), "--calib", str(digit_photo_folder), "--labels",
            str(digit_labels(tmp_path)), "--target", "ncnn", "--out", str(model_dir.parent)]
    before = {path.name: sha256_of(path) for path in model_dir.iterdir() if path.name != "logs"}

    refused = run_cli(args, cwd=user_package)
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert "my_mod_int8.tflite): made from another ONNX graph" in refused.stderr
    assert "--rebuild" in refused.stderr and "another --out" in refused.stderr
    assert {path.name: sha256_of(path) for path in model_dir.iterdir() if path.name != "logs"} == before

    rebuilt = run_cli([*args, "--rebuild"], cwd=user_package)
    assert rebuilt.returncode == 0, rebuilt.stderr[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert {a["runtime"] for a in manifest["artifacts"]} == {"onnx", "ncnn"}
    assert manifest["model"]["weights"] == str(tmp_path / "other_weights.pt")
    first = by_name(json.loads((digits_android_export / "manifest.json").read_text()))
    def checksums(artifact):  # an ncnn .param holds no weights: other weights change only the .bin
        return [record["sha256"] for record in artifact["files"]]

    assert all(checksums(a) != checksums(first[name]) for name, a in by_name(manifest).items())
    assert not list(model_dir.glob("*.tflite")) and artifact_files(model_dir) == listed_files(model_dir, manifest)
    assert "removed: my_mod_int8.tflite (made from another ONNX graph" in rebuilt.stdout
    with zipfile.ZipFile(model_dir / "bundle.zip") as bundle:
        assert not [name for name in bundle.namelist() if name.endswith(".tflite")]


# ---- a failed target with --keep-going --------------------------------------------------------------------------


def test_a_target_failing_with_keep_going_takes_its_earlier_artifacts_out_and_stays_failed(
    digits_android_export, user_package, digit_photo_folder, tmp_path, monkeypatch
):
    model_dir = copied(digits_android_export, tmp_path)
    monkeypatch.chdir(user_package)
    monkeypatch.syspath_prepend(str(user_package))
    args = ["export", *MODEL, "--calib", str(digit_photo_folder), "--labels", str(digit_labels(tmp_path)),
            "--out", str(model_dir.parent)]
    substitute_tflite_converter(monkeypatch, [sys.executable, "-c", "raise SystemExit(7)"])
    # --rebuild: the TFLite conversion runs (and fails) instead of reusing the earlier one; ncnn is kept.
    failed = CliRunner().invoke(main, [*args, "--target", "tflite", "--rebuild", "--keep-going"])
    assert failed.exit_code == 3, failed.output[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert {a["runtime"] for a in manifest["artifacts"]} == {"onnx", "ncnn"}
    assert [(f["target"], f["kept"]) for f in manifest["failed_targets"]] == [("tflite", False)]
    assert manifest["gates_passed"] is False
    assert not list(model_dir.glob("*.tflite")) and artifact_files(model_dir) == listed_files(model_dir, manifest)
    assert "removed: my_mod_int8.tflite (its target tflite failed in this export" in failed.output

    later = CliRunner().invoke(main, [*args, "--target", "ncnn"])
    assert later.exit_code == 0, later.output[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert [(f["target"], f["kept"]) for f in manifest["failed_targets"]] == [("tflite", True)]
    assert manifest["gates_passed"] is False  # the folder still lacks what an earlier export failed to build
    assert "still failed from an earlier export: tflite" in later.output and "--target tflite" in later.output


# ---- what an export finds in the folder, without converting ---------------------------------------------------


@pytest.fixture()
def android_copy(digits_android_export, tmp_path) -> Path:
    return copied(digits_android_export, tmp_path)


def edit_manifest(model_dir: Path, change) -> None:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    change(manifest)
    (model_dir / "manifest.json").write_text(json.dumps(manifest))


ASKED_FOR_NCNN = ("onnx", "ncnn")


def test_other_targets_made_from_the_same_inputs_are_kept_whatever_options_they_were_made_with(android_copy):
    def int8_io(manifest):
        for artifact in manifest["artifacts"]:
            if artifact["runtime"] == "tflite":
                artifact["details"]["conversion"]["options"]["int8_io"] = True

    edit_manifest(android_copy, int8_io)
    manifest = read_manifest(android_copy)
    earlier = survey(android_copy, manifest.made_from, ASKED_FOR_NCNN)
    assert [a.name for a in earlier.kept] == ["my_mod_fp32.tflite", "my_mod_fp16.tflite", "my_mod_int8.tflite"]
    assert earlier.leftovers == ()
    refuse_leftovers(android_copy, earlier)  # nothing to refuse


@pytest.mark.parametrize("what, why", [("calibration", "other calibration photos"),
                                       ("contract", "another input contract"),
                                       ("graph", "another ONNX graph")])
def test_artifacts_made_from_other_inputs_are_refused_with_the_fix(android_copy, what, why):
    made_from = {**read_manifest(android_copy).made_from, what: "0" * 64}
    earlier = survey(android_copy, made_from, ASKED_FOR_NCNN)
    assert earlier.kept == ()
    assert {leftover.paths for leftover in earlier.leftovers} == {
        ("my_mod_fp32.tflite",), ("my_mod_fp16.tflite",), ("my_mod_int8.tflite",)}
    with pytest.raises(InputError, match=f"my_mod_int8.tflite\\): made from {why}") as refused:
        refuse_leftovers(android_copy, earlier)
    assert "--rebuild" in refused.value.hint and "another --out" in refused.value.hint


def test_other_labels_count_only_for_runtimes_that_embed_them(android_copy, monkeypatch):
    made_from = {**read_manifest(android_copy).made_from, "labels": "0" * 64}
    assert len(survey(android_copy, made_from, ASKED_FOR_NCNN).kept) == 3  # TFLite does not embed labels
    monkeypatch.setattr(get_target("tflite"), "embeds_labels", True)
    earlier = survey(android_copy, made_from, ASKED_FOR_NCNN)
    assert earlier.kept == () and {leftover.why for leftover in earlier.leftovers} == {"made from other labels"}


def test_an_artifact_edited_by_hand_is_not_kept(android_copy):
    with open(android_copy / "my_mod_int8.tflite", "r+b") as artifact:
        artifact.seek(-1, 2)
        last = artifact.read(1)
        artifact.seek(-1, 2)
        artifact.write(bytes([last[0] ^ 0xFF]))
    earlier = survey(android_copy, read_manifest(android_copy).made_from, ASKED_FOR_NCNN)
    assert [a.name for a in earlier.kept] == ["my_mod_fp32.tflite", "my_mod_fp16.tflite"]
    (edited,) = earlier.leftovers
    assert edited.paths == ("my_mod_int8.tflite",) and edited.why == EDITED
    with pytest.raises(InputError, match="tflite int8 \\(my_mod_int8.tflite\\): changed since the export"):
        refuse_leftovers(android_copy, earlier)


def test_files_no_manifest_lists_are_refused_and_the_commands_records_are_not(android_copy):
    (android_copy / "my_mod_old.tflite").write_bytes(b"an artifact of an older mobile-export")
    (android_copy / "my_mod_int8.explain.json").write_text("{}")
    (android_copy / "my_mod_int8.explain.png").write_bytes(b"png")
    (android_copy / "bench.json").write_text("{}")
    earlier = survey(android_copy, read_manifest(android_copy).made_from, ASKED_FOR_NCNN)
    assert [(leftover.what, leftover.why) for leftover in earlier.leftovers] == [("my_mod_old.tflite", UNLISTED)]
    with pytest.raises(InputError, match="my_mod_old.tflite: no manifest lists it"):
        refuse_leftovers(android_copy, earlier)


def test_an_artifact_whose_files_are_all_gone_is_dropped_and_a_half_gone_one_refused(android_copy):
    (android_copy / "my_mod_int8.tflite").unlink()
    earlier = survey(android_copy, read_manifest(android_copy).made_from, ("onnx", "tflite"))
    refuse_leftovers(android_copy, earlier)  # the TFLite target replaces it; nothing of it is left
    for name in ("my_mod_fp16.ncnn.param", "my_mod_fp16.ncnn.bin"):
        (android_copy / name).unlink()
    (android_copy / "my_mod_fp32.ncnn.bin").unlink()
    earlier = survey(android_copy, read_manifest(android_copy).made_from, ("onnx", "tflite"))
    gone = {leftover.what: leftover.paths for leftover in earlier.leftovers}
    assert gone == {"ncnn fp32 (my_mod_fp32.ncnn.param)": ("my_mod_fp32.ncnn.param",),
                    "ncnn fp16 (my_mod_fp16.ncnn.param)": ()}
    with pytest.raises(InputError) as refused:
        refuse_leftovers(android_copy, earlier)
    assert "ncnn fp32" in refused.value.message and "ncnn fp16" not in refused.value.message


def test_a_manifest_older_than_schema_2_keeps_nothing_of_other_targets(android_copy):
    made_from = read_manifest(android_copy).made_from
    edit_manifest(android_copy, lambda manifest: manifest.pop("made_from"))
    earlier = survey(android_copy, made_from, ASKED_FOR_NCNN)
    assert earlier.kept == () and len(earlier.leftovers) == 3
    assert all("older than schema 2" in leftover.why for leftover in earlier.leftovers)


def test_an_earlier_failure_stands_until_its_target_is_asked_for_or_the_model_changes(android_copy):
    failure = {"target": "coreml", "exit_code": 3, "error": "coremltools failed", "hint": "see the log", "kept": False}
    edit_manifest(android_copy, lambda manifest: manifest["failed_targets"].append(failure))
    made_from = read_manifest(android_copy).made_from
    assert survey(android_copy, made_from, ASKED_FOR_NCNN).failures == ({**failure, "kept": True},)
    assert survey(android_copy, made_from, ("onnx", "coreml")).failures == ()
    other_model = {**made_from, "graph": "0" * 64}
    assert survey(android_copy, other_model, ("onnx", "tflite", "ncnn")).failures == ()


def test_a_removal_while_publishing_is_put_back_when_publishing_fails(tmp_path):
    model_dir = tmp_path / "model"
    (model_dir / "stale.mlpackage").mkdir(parents=True)
    (model_dir / "stale.mlpackage" / "weights.bin").write_bytes(b"stale")
    with exclusive_staging(model_dir) as staging:
        with pytest.raises(OSError, match="disk gave up"):
            with publishing(staging) as publisher:
                publisher.remove(model_dir / "stale.mlpackage")
                assert not (model_dir / "stale.mlpackage").exists()
                raise OSError("disk gave up while writing the manifest")
    assert (model_dir / "stale.mlpackage" / "weights.bin").read_bytes() == b"stale"
