"""An unchanged model re-exports without converting again; any change, or a damaged artifact, converts afresh."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from core.artifact import ConversionJob, OnnxModel, TensorSpec
from core.contract import InputContract
from exporter.cache import MADE_FROM, NOT_SHAPING_THE_RESULT, OPTIONS, conversion_key, conversion_options, made_from
from tests.helpers import DIGITS_CONTRACT, run_cli


@pytest.fixture()
def job(tmp_path) -> ConversionJob:
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"graph bytes")
    contract = InputContract((1, 3, 8, 8), (0.5,) * 3, (0.25,) * 3)
    return ConversionJob(
        onnx=OnnxModel(onnx_file, "input", (1, 3, 8, 8), (TensorSpec("output", (1, 10)),)), contract=contract,
        calibration=np.zeros((4, 3, 8, 8), np.float32), workdir=tmp_path / "a", log_path=tmp_path / "a.log",
    )


def test_the_key_follows_what_shapes_the_artifacts_and_nothing_else(job, tmp_path):
    key = conversion_key(job, "ncnn", {"pnnx": "1"})
    elsewhere = dataclasses.replace(job, workdir=tmp_path / "b", log_path=tmp_path / "b.log", timeout_s=5.0)
    assert conversion_key(elsewhere, "ncnn", {"pnnx": "1"}) == key
    changed = [
        conversion_key(job, "tflite", {"pnnx": "1"}),
        conversion_key(job, "ncnn", {"pnnx": "2"}),
        conversion_key(dataclasses.replace(job, int8_io=True), "ncnn", {"pnnx": "1"}),
        conversion_key(dataclasses.replace(job, calibration=np.ones((4, 3, 8, 8), np.float32)), "ncnn", {"pnnx": "1"}),
        conversion_key(dataclasses.replace(job, contract=dataclasses.replace(job.contract, color="bgr")), "ncnn",
                       {"pnnx": "1"}),
    ]
    job.onnx.path.write_bytes(b"other graph bytes")
    changed.append(conversion_key(job, "ncnn", {"pnnx": "1"}))
    assert key not in changed and len(set(changed)) == len(changed)


def test_every_job_field_says_where_to_work_what_artifacts_are_made_from_or_how(job):
    """A new ConversionJob field must land in one of the three, or the manifest would not say it shaped an artifact."""
    made_from_fields = ("onnx", "contract", "calibration", "labels")
    assert all(made.value_of(job) is getattr(job, name) for made, name in zip(MADE_FROM.values(), made_from_fields))
    assert {field.name for field in dataclasses.fields(ConversionJob)} == \
        NOT_SHAPING_THE_RESULT | set(made_from_fields) | set(OPTIONS)
    assert set(conversion_options(job)) == set(OPTIONS) and set(made_from(job)) == set(MADE_FROM)
    other_calibration = made_from(dataclasses.replace(job, calibration=np.ones((4, 3, 8, 8), np.float32)))
    assert {name for name, digest in other_calibration.items() if digest != made_from(job)[name]} == {"calibration"}


def ncnn_export(user_package: Path, photos: Path, out: Path, *extra: str):
    result = run_cli(
        ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT, "--calib", str(photos), "--target", "ncnn",
         "--out", str(out), *extra],
        cwd=user_package,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    manifest = json.loads((out / "my_mod" / "manifest.json").read_text())
    ncnn = [a for a in manifest["artifacts"] if a["runtime"] == "ncnn"]
    assert len(ncnn) == 3 and all(a["parity"]["passed"] for a in ncnn)
    return result, ncnn


def reused(artifacts: list[dict]) -> set[bool]:
    return {artifact["details"]["conversion"]["reused"] for artifact in artifacts}


def test_second_export_reuses_until_an_artifact_is_damaged_or_rebuild_is_asked(user_package, digit_photo_folder,
                                                                                tmp_path):
    out = tmp_path / "out"
    _, first = ncnn_export(user_package, digit_photo_folder, out)
    assert reused(first) == {False}

    result, second = ncnn_export(user_package, digit_photo_folder, out)
    assert reused(second) == {True} and "reusing its artifacts" in result.stderr
    assert [a["sha256"] for a in second] == [a["sha256"] for a in first]

    damaged = out / "my_mod" / first[0]["files"][1]["path"]  # the .bin with the weights
    damaged.write_bytes(damaged.read_bytes()[:-4] + b"\0\0\0\0")
    _, third = ncnn_export(user_package, digit_photo_folder, out)
    assert reused(third) == {False}
    assert [a["sha256"] for a in third] == [a["sha256"] for a in first]  # pnnx is deterministic

    _, rebuilt = ncnn_export(user_package, digit_photo_folder, out, "--rebuild")
    assert reused(rebuilt) == {False}
