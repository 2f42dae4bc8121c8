"""Faults during an export: killed runs, crashing targets, failures while publishing.

The acceptance test: killing `mobile-export export` (Ctrl-C or SIGKILL) while the TFLite converter child runs
leaves the earlier manifest and artifacts byte-identical, stops the converter, and leaves no partial files;
staging a SIGKILL could not remove is cleaned by the next run. The killed runs pass --int8-io so that
their conversion differs from the earlier one (a conversion cache could not skip the TFLite child).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner

from exporter.cli import main
from exporter.publish import LOCK_NAME, STAGING_PREFIX, exclusive_staging, interrupts_ignored, publishing
from targets import get_target
from tests.helpers import REPO, substitute_tflite_converter

DIGITS = ["--model", "python:my_pkg.my_mod:build", "--input-shape", "1,3,32,32", "--mean", "0.5,0.5,0.5",
          "--std", "0.25,0.25,0.25"]


def artifacts_state(model_dir: Path) -> dict[str, str]:
    """Manifest, labels and artifacts with their SHA-256 (logs, the lock and stale staging are not artifacts)."""
    return {
        path.relative_to(model_dir).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(model_dir.rglob("*"))
        if path.is_file() and path.relative_to(model_dir).parts[0] != "logs" and path.name != LOCK_NAME
        and not path.relative_to(model_dir).parts[0].startswith(STAGING_PREFIX)
    }


def staging_folders(model_dir: Path) -> list[Path]:
    return list(model_dir.glob(f"{STAGING_PREFIX}*"))


def start_export(args: list[str], cwd: Path, log: Path, settings: dict[str, str] | None = None) -> subprocess.Popen:
    env = {**os.environ, **(settings or {}), "PYTHONPATH": str(REPO)}
    with open(log, "w") as output:
        return subprocess.Popen([sys.executable, "-m", "exporter.cli", "export", *args], cwd=cwd, env=env,
                                stdout=output, stderr=subprocess.STDOUT, preexec_fn=_ctrl_c_not_ignored)


def _ctrl_c_not_ignored() -> None:
    """A shell's background job (`make test &`, nohup) inherits Ctrl-C ignored, and Python keeps it ignored:
    the export under test must get the disposition a user's terminal gives it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_tflite_child(export: subprocess.Popen, timeout_s: float = 900) -> psutil.Process:
    """The TFLite converter child, once it has started (and had a moment to get into onnx2tf)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert export.poll() is None, "the export ended before its TFLite conversion started"
        for child in psutil.Process(export.pid).children(recursive=True):
            try:
                if "targets.tflite" in " ".join(child.cmdline()):
                    time.sleep(3)
                    return child
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.5)
    raise AssertionError("the TFLite conversion did not start in time")


def assert_stopped(process: psutil.Process, within_s: float = 20) -> None:
    _, alive = psutil.wait_procs([process], timeout=within_s)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, "the converter child outlived the export"


@pytest.fixture(scope="module")
def earlier_export(digits_android_export, tmp_path_factory) -> Path:
    """A copy of the session's Android export of the digits model: OUT/my_mod, which the killed runs target."""
    out = tmp_path_factory.mktemp("earlier")
    shutil.copytree(digits_android_export, out / "my_mod")
    return out / "my_mod"


@pytest.mark.parametrize("kill", ["SIGINT", "SIGKILL"])
def test_killing_the_export_during_tflite_conversion_loses_nothing(
    kill, earlier_export, user_package, digit_photo_folder, tmp_path
):
    model_dir = earlier_export
    before = artifacts_state(model_dir)
    assert "manifest.json" in before and "my_mod_int8.tflite" in before
    args = [*DIGITS, "--calib", str(digit_photo_folder), "--target", "tflite", "--int8-io",
            "--out", str(model_dir.parent)]
    export = start_export(args, user_package, tmp_path / "export.log")
    converter = wait_for_tflite_child(export)
    export.send_signal(getattr(signal, kill))
    returncode = export.wait(timeout=120)
    assert_stopped(converter)
    assert artifacts_state(model_dir) == before
    if kill == "SIGINT":
        assert returncode == 130
        assert "interrupted" in (tmp_path / "export.log").read_text()
        assert not staging_folders(model_dir)
    else:
        assert returncode == -signal.SIGKILL
        assert staging_folders(model_dir), "a SIGKILL leaves its staging folder; the next run must remove it"
        next_run_removes_stale_staging(model_dir, user_package, digit_photo_folder, tmp_path)
        assert artifacts_state(model_dir) == before


def next_run_removes_stale_staging(model_dir: Path, user_package: Path, digit_photo_folder: Path, tmp_path: Path):
    """A quick next run that fails after taking the folder's lock (labels for 3 classes, the model has 10)."""
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\ntwo\n")
    log = tmp_path / "next_run.log"
    args = [*DIGITS, "--calib", str(few_photos(digit_photo_folder, tmp_path)), "--labels", str(labels),
            "--target", "tflite", "--out", str(model_dir.parent)]
    assert start_export(args, user_package, log).wait(timeout=600) == 2, log.read_text()[-2000:]
    assert "has 3 names" in log.read_text()
    assert not staging_folders(model_dir)


def few_photos(photos: Path, tmp_path: Path) -> Path:
    """8 photos: enough to calibrate and hold out 2, so runs that never reach the end stay quick."""
    folder = tmp_path / "few_photos"
    folder.mkdir(exist_ok=True)
    for photo in sorted(photos.iterdir())[:8]:
        shutil.copy(photo, folder / photo.name)
    return folder


# What changes how floats are summed without changing what is asked: thread counts (the int8 recipe's, BLAS's,
# OpenMP's; the session export ran with the defaults, this one with one thread) and MKL held to AVX2 as on an
# older CPU. With PyTorch's own BatchNorm folding instead of graph/passes/fold_batch_norm.py, the AVX2 path
# changed the int8 TFLite's sha256 here (checked by putting the exporter's folding back).
ANOTHER_MACHINE = {"MOBILE_EXPORT_INT8_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                   "OPENBLAS_NUM_THREADS": "1", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def test_a_rerun_with_other_thread_counts_is_byte_identical_where_the_manifest_says_so(
    digits_android_export, user_package, digit_photo_folder, tmp_path
):
    """A second export into a fresh folder (nothing to reuse) with the session export's exact inputs, as another
    machine would run it (bench/reproducibility.py does the same on the default model)."""
    args = [*DIGITS, "--calib", str(digit_photo_folder), "--target", "android", "--out", str(tmp_path / "again")]
    export = start_export(args, user_package, tmp_path / "export.log", ANOTHER_MACHINE)
    assert export.wait(timeout=1800) == 0, (tmp_path / "export.log").read_text()[-3000:]
    first = json.loads((digits_android_export / "manifest.json").read_text())
    second = json.loads((tmp_path / "again" / "my_mod" / "manifest.json").read_text())
    # every file of an artifact: an ncnn .param holds no weights, its .bin does
    first_sha = {(a["runtime"], a["precision"]): [f["sha256"] for f in a["files"]] for a in first["artifacts"]}
    for artifact in second["artifacts"]:
        key = (artifact["runtime"], artifact["precision"])
        assert artifact["reproducible"] == get_target(artifact["runtime"]).is_reproducible(artifact["precision"])
        if artifact["reproducible"]:
            assert [f["sha256"] for f in artifact["files"]] == first_sha[key], f"{key} is marked reproducible but changed"


def test_keep_going_publishes_the_other_targets_and_records_the_crash(
    user_package, digit_photo_folder, tmp_path, monkeypatch
):
    crash = "import os, signal; print('TensorFlow says a lot'); os.kill(os.getpid(), signal.SIGSEGV)"
    substitute_tflite_converter(monkeypatch, [sys.executable, "-c", crash])
    monkeypatch.chdir(user_package)
    monkeypatch.syspath_prepend(str(user_package))
    few = few_photos(digit_photo_folder, tmp_path)
    result = CliRunner().invoke(main, ["export", *DIGITS, "--calib", str(few), "--target", "android",
                                       "--keep-going", "--out", str(tmp_path / "out")])
    assert result.exit_code == 3, result.output[-3000:]
    assert "1 target(s) failed (tflite)" in result.output and "crashed (SIGSEGV)" in result.output
    assert "Traceback" not in result.output
    model_dir = tmp_path / "out" / "my_mod"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert {a["runtime"] for a in manifest["artifacts"]} == {"onnx", "ncnn"}
    assert all(a["parity"]["passed"] for a in manifest["artifacts"])
    assert [(f["target"], f["exit_code"]) for f in manifest["failed_targets"]] == [("tflite", 3)]
    assert manifest["gates_passed"] is False
    assert (model_dir / "my_mod_fp32.ncnn.bin").is_file() and not list(model_dir.glob("*.tflite"))
    assert "TensorFlow says a lot" in (model_dir / "logs" / "tflite.log").read_text()


def test_without_keep_going_a_crashing_target_publishes_nothing(user_package, digit_photo_folder, tmp_path,
                                                                 monkeypatch):
    substitute_tflite_converter(monkeypatch, [sys.executable, "-c", "raise SystemExit(7)"])
    monkeypatch.chdir(user_package)
    monkeypatch.syspath_prepend(str(user_package))
    few = few_photos(digit_photo_folder, tmp_path)
    result = CliRunner().invoke(main, ["export", *DIGITS, "--calib", str(few), "--target", "tflite",
                                       "--out", str(tmp_path / "out")])
    assert result.exit_code == 3 and "failed (exit code 7)" in result.output
    assert artifacts_state(tmp_path / "out" / "my_mod") == {}


# ---- the publishing mechanics, without converters --------------------------------------------------------


def test_a_failure_while_publishing_puts_the_previous_files_back(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "a.tflite").write_bytes(b"old a")
    (model_dir / "b.mlpackage").mkdir()
    (model_dir / "b.mlpackage" / "weights.bin").write_bytes(b"old b")
    with exclusive_staging(model_dir) as staging:
        (staging / "a.tflite").write_bytes(b"new a")
        (staging / "b.mlpackage").mkdir()
        (staging / "b.mlpackage" / "weights.bin").write_bytes(b"new b")
        (staging / "c.param").write_bytes(b"new c")
        with pytest.raises(OSError, match="disk gave up"):
            with publishing(staging) as publisher:
                for name in ("a.tflite", "b.mlpackage", "c.param"):
                    publisher.move(staging / name, model_dir / name)
                raise OSError("disk gave up while writing the manifest")
    assert (model_dir / "a.tflite").read_bytes() == b"old a"
    assert (model_dir / "b.mlpackage" / "weights.bin").read_bytes() == b"old b"
    assert not (model_dir / "c.param").exists() and not staging_folders(model_dir)


def test_ctrl_c_while_publishing_does_not_stop_it_halfway():
    # Python's own Ctrl-C handler, as in a terminal, even when the tests run as a background job (Ctrl-C ignored).
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        finished = []
        with interrupts_ignored():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            finished.append("manifest written")
        assert finished == ["manifest written"]
        with pytest.raises(KeyboardInterrupt):  # the usual handler is back
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        signal.signal(signal.SIGINT, inherited)


def test_stale_staging_is_removed_and_a_second_export_is_refused(tmp_path):
    from core.errors import InputError

    model_dir = tmp_path / "model"
    (model_dir / f"{STAGING_PREFIX}killed").mkdir(parents=True)
    (model_dir / ".manifest.json.half").write_text("{")
    (model_dir / "model.onnx").write_bytes(b"artifact")
    with exclusive_staging(model_dir) as staging:
        assert sorted(p.name for p in model_dir.iterdir()) == sorted([LOCK_NAME, "model.onnx", staging.name])
        with pytest.raises(InputError, match="another mobile-export is writing"):
            with exclusive_staging(model_dir):
                pass
    assert sorted(p.name for p in model_dir.iterdir()) == [LOCK_NAME, "model.onnx"]
