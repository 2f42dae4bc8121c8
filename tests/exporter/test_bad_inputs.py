"""Every expected failure ends with one clear message, the right exit code, no traceback, and an output
folder left exactly as the previous export left it.

The table covers bad model sources, user code that fails, shapes, calibration data, labels, untrusted files,
the output folder itself, disk full, and converters that crash, hang or meet an op their runtime lacks.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from exporter.cli import main
from exporter.publish import LOCK_NAME
from exporter.zoo.mobilenet_v2 import mobilenet_v2
from tests.helpers import REPO

DIGITS_CONTRACT = ["--input-shape", "1,3,32,32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]
DIGITS = ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT]


def folder_state(folder: Path) -> dict[str, str]:
    """Every file under `folder` with its SHA-256, except the converters' logs (appended to by design) and
    the lock file (empty, kept so the lock is one file for every run)."""
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "logs" not in path.relative_to(folder).parts and path.name != LOCK_NAME
    }


def previous_export(out: Path, model_name: str) -> None:
    """What an earlier successful export left: a manifest and artifacts the failed run must not touch. No
    manifest of ours lists them, so an export refuses the folder before converting unless --rebuild is given:
    the cases that must reach a converter pass it."""
    folder = out / model_name
    (folder / "logs").mkdir(parents=True)
    (folder / "manifest.json").write_text('{"earlier": "export"}\n')
    (folder / f"{model_name}.onnx").write_bytes(b"earlier onnx")
    (folder / f"{model_name}_fp32.tflite").write_bytes(b"earlier tflite")
    (folder / f"{model_name}_fp32.ncnn.param").write_bytes(b"earlier param")


@dataclass
class Case:
    args: Callable[["Inputs"], list[str]]
    exit_code: int
    message: str
    model_name: str = "my_mod"
    setup: Callable[["Inputs", pytest.MonkeyPatch], None] | None = None
    extra_checks: list[Callable[["Inputs", str], None]] = field(default_factory=list)


class Inputs:
    """Bad files and folders, made on demand in the test's own temporary folder."""

    def __init__(self, tmp: Path, photos: Path, user_package: Path):
        self.tmp, self.photos, self.user_package = tmp, photos, user_package
        self.out = tmp / "out"
        self.held_locks: list = []

    def path(self, name: str) -> Path:
        return self.tmp / name

    def few_photos(self) -> Path:
        """8 photos: enough to calibrate and hold out 2, so cases that reach the converters stay quick."""
        folder = self.path("few_photos")
        folder.mkdir(exist_ok=True)
        for photo in sorted(self.photos.iterdir())[:8]:
            shutil.copy(photo, folder / photo.name)
        return folder

    def digits_onnx(self, name: str = "digits") -> Path:
        path = self.path(f"{name}.onnx")
        if not path.exists():
            torch.onnx.export(self.digits_module(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                              opset_version=17, input_names=["input"], output_names=["output"])
        return path

    def digits_module(self):
        sys.path.insert(0, str(self.user_package))
        try:
            from my_pkg import my_mod

            return my_mod.build().eval()
        finally:
            sys.path.remove(str(self.user_package))

    def truncated_onnx(self) -> Path:
        source = self.digits_onnx().read_bytes()
        path = self.path("truncated.onnx")
        path.write_bytes(source[: len(source) // 2])
        return path

    def onnx_with_external_data(self, location: str) -> Path:
        import onnx

        model = onnx.load(str(self.digits_onnx()))
        folder = self.path("escaping")
        folder.mkdir(exist_ok=True)
        onnx.save(model, str(folder / "escaping.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="weights.bin", size_threshold=0)
        (self.tmp / "secret.bin").write_bytes((folder / "weights.bin").read_bytes())
        saved = onnx.load(str(folder / "escaping.onnx"), load_external_data=False)
        for tensor in saved.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(saved, str(folder / "escaping.onnx"))
        return folder / "escaping.onnx"

    def onnx_with_nan_weight(self) -> Path:
        import onnx
        from onnx import numpy_helper

        model = onnx.load(str(self.digits_onnx()))
        weight = next(t for t in model.graph.initializer if len(t.dims) == 4)
        values = numpy_helper.to_array(weight).copy()
        values.flat[0] = np.nan
        weight.CopyFrom(numpy_helper.from_array(values, weight.name))
        path = self.path("diverged.onnx")
        onnx.save(model, str(path))
        return path

    def onnx_with_op_ncnn_lacks(self) -> Path:
        class Determinant(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)

            def forward(self, x):
                return torch.linalg.det(self.conv(x)[:, :, :4, :4]).reshape(1, 4)

        path = self.path("determinant.onnx")
        torch.onnx.export(Determinant().eval(), (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False,
                          opset_version=17, input_names=["input"], output_names=["output"])
        return path

    def empty_folder(self) -> Path:
        folder = self.path("empty_photos")
        folder.mkdir(exist_ok=True)
        (folder / "notes.txt").write_text("no photos here")
        return folder

    def text_posing_as_photo(self) -> Path:
        folder = self.path("not_photos")
        folder.mkdir(exist_ok=True)
        for photo in sorted(self.photos.iterdir())[:4]:
            shutil.copy(photo, folder / photo.name)
        (folder / "IMG_0042.jpg").write_text("this is not a JPEG")
        return folder

    def pickled_module(self) -> Path:
        path = self.path("whole_module.pt")
        torch.save(mobilenet_v2(num_classes=10), path)
        return path

    def nan_weights(self) -> Path:
        state = self.digits_module().state_dict()
        state["head.weight"][0, 0] = float("inf")
        path = self.path("diverged.pt")
        torch.save(state, path)
        return path

    def labels(self, count: int) -> Path:
        path = self.path(f"labels_{count}.txt")
        path.write_text("".join(f"class {i}\n" for i in range(count)))
        return path

    def pickled_npy(self) -> Path:
        path = self.path("objects.npy")
        np.save(path, np.array([{"not": "pixels"}], dtype=object), allow_pickle=True)
        return path

    def user_module(self, name: str, source: str) -> str:
        (self.user_package / "my_pkg" / f"{name}.py").write_text(source)
        return f"python:my_pkg.{name}:build"

    def config(self, text: str) -> Path:
        path = self.path("export.toml")
        path.write_text(text)
        return path

    def fake_converter(self, name: str, script: str) -> Path:
        path = self.path(name)
        path.write_text("#!/bin/sh\n" + script)
        path.chmod(0o755)
        return path


NAN_OUTPUT_MODEL = """import torch


class Diverged(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3)) * float("nan")


def build():
    return Diverged()
"""
LIST_OUTPUT_MODEL = """import torch


class Nested(torch.nn.Module):
    def forward(self, x):
        return x.mean((2, 3)), [x.amax((2, 3))]


def build():
    return Nested()
"""


def replace_converter(monkeypatch, executable_suffix: str, replacement: Path) -> None:
    """Run `replacement` wherever the pipeline would start a converter whose argv[0] ends in the suffix."""
    import core.process as process

    real = process.spawn_child  # every converter child starts here, alone or side by side

    def substituted(args, *rest):
        if args[0].endswith(executable_suffix):
            args = [str(replacement), *args[1:]]
        return real(args, *rest)

    monkeypatch.setattr(process, "spawn_child", substituted)


def disk_full_while_saving_onnx(inputs: Inputs, monkeypatch) -> None:
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("onnx.save", no_space)


def another_export_running(inputs: Inputs, monkeypatch) -> None:
    lock = open(inputs.out / "my_mod" / LOCK_NAME, "a")
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    inputs.held_locks.append(lock)


def crashing_pnnx(inputs: Inputs, monkeypatch) -> None:
    script = 'i=0; while [ $i -lt 50 ]; do echo "pnnx: noisy line $i"; i=$((i+1)); done\nkill -SEGV $$\n'
    replace_converter(monkeypatch, "pnnx", inputs.fake_converter("pnnx_crash", script))


def hanging_pnnx(inputs: Inputs, monkeypatch) -> None:
    pid_file = inputs.path("sleeper.pid")
    script = f"echo pnnx starting\nsleep 120 &\necho $! > {pid_file}\nwait\n"
    replace_converter(monkeypatch, "pnnx", inputs.fake_converter("pnnx_hang", script))


def sleeper_was_stopped(inputs: Inputs, output: str) -> None:
    """The converter's own child (the grandchild) was killed with it: process groups, not just the child."""
    pid = int(inputs.path("sleeper.pid").read_text())
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1].startswith("Z"), "the converter's child survived"


def noise_is_summarized(inputs: Inputs, output: str) -> None:
    assert "noisy line 49" in output and "noisy line 10" not in output  # the tail, not the wall of text


CASES: dict[str, Case] = {
    "unknown model source": Case(lambda i: ["--model", "model.h5"], 2, "unknown model source"),
    "unknown zoo model": Case(lambda i: ["--model", "zoo:resnet152"], 2, "unknown zoo model"),
    "factory module missing": Case(lambda i: ["--model", "python:no_such_pkg.models:build"], 2,
                                   "cannot import 'no_such_pkg.models'"),
    "import error inside the user's module": Case(
        lambda i: ["--model", i.user_module("needs_missing_dep", "import not_installed_anywhere\n"), *DIGITS_CONTRACT],
        2, "ModuleNotFoundError: No module named 'not_installed_anywhere'", model_name="needs_missing_dep"),
    "user module exits while imported": Case(
        lambda i: ["--model", i.user_module("exits", "import sys\nsys.exit(4)\n"), *DIGITS_CONTRACT],
        2, "cannot import 'my_pkg.exits'", model_name="exits"),
    "factory not callable": Case(lambda i: ["--model", "python:my_pkg.my_mod:WEIGHTS"], 2, "no callable 'WEIGHTS'"),
    "factory raises": Case(
        lambda i: ["--model", i.user_module("raises", "def build():\n    raise ValueError('no GPU')\n")],
        2, "build() raised ValueError: no GPU", model_name="raises"),
    "input shape not 4-D": Case(lambda i: [*DIGITS[:2], "--input-shape", "1,3,32"], 2, "N,C,H,W"),
    "input shape the model rejects": Case(
        lambda i: [*DIGITS[:2], "--input-shape", "1,1,32,32", "--mean", "0.5", "--std", "0.25"],
        2, "does not accept input shape (1, 1, 32, 32)"),
    "empty calibration folder": Case(lambda i: [*DIGITS, "--calib", str(i.empty_folder())], 2, "contains no images"),
    "missing calibration folder": Case(lambda i: [*DIGITS, "--calib", str(i.path("nowhere"))], 2, "does not exist"),
    "text file posing as a photo": Case(lambda i: [*DIGITS, "--calib", str(i.text_posing_as_photo())], 2,
                                        "cannot read image"),
    "pickled objects in a calibration .npy": Case(lambda i: [*DIGITS, "--calib", str(i.pickled_npy())], 2,
                                                  "without pickled objects"),
    "pickled checkpoint as model": Case(lambda i: ["--model", str(i.pickled_module())], 2, "pickled Python object",
                                        model_name="whole_module"),
    "pickled checkpoint as weights": Case(
        lambda i: ["--model", "zoo:mobilenet_v2", "--weights", str(i.pickled_module())], 2, "pickled Python objects",
        model_name="mobilenet_v2"),
    "NaN output": Case(
        lambda i: ["--model", i.user_module("nan_out", NAN_OUTPUT_MODEL), *DIGITS_CONTRACT, "--calib", str(i.few_photos())],
        2, "the model's output 'output' is NaN or infinite on", model_name="nan_out"),
    "an output that is no tensor": Case(
        lambda i: ["--model", i.user_module("list_out", LIST_OUTPUT_MODEL), *DIGITS_CONTRACT], 2,
        "the model's outputs output_1 (list) are not tensors", model_name="list_out"),
    "a kind the output's shape cannot have": Case(
        lambda i: [*DIGITS, "--calib", str(i.few_photos()), "--config", str(i.config('[outputs.output]\nkind = "class_map"\n'))],
        2, "output 'output' has shape [1, 10], which a class_map cannot have"),
    "Inf in the weights": Case(lambda i: [*DIGITS, "--weights", str(i.nan_weights())], 2, "contains NaN or Inf"),
    "missing labels file": Case(lambda i: [*DIGITS, "--labels", str(i.path("labels.txt"))], 2,
                                "labels.txt does not exist"),
    "labels for another number of classes": Case(
        lambda i: [*DIGITS, "--calib", str(i.few_photos()), "--labels", str(i.labels(3))], 2,
        "has 3 names but the model outputs 10 classes"),
    "truncated ONNX file": Case(lambda i: ["--model", str(i.truncated_onnx()), *DIGITS_CONTRACT], 2,
                                "is not a valid ONNX model", model_name="truncated"),
    "ONNX external data outside its folder": Case(
        lambda i: ["--model", str(i.onnx_with_external_data("../secret.bin")), *DIGITS_CONTRACT], 2,
        "outside the model's folder", model_name="escaping"),
    "NaN in ONNX weights": Case(lambda i: ["--model", str(i.onnx_with_nan_weight()), *DIGITS_CONTRACT], 2,
                                "contains NaN or Inf", model_name="diverged"),
    "model name that would hide in the output folder": Case(
        lambda i: ["--model", str(shutil.copy(i.digits_onnx(), i.path(".hidden.onnx"))), *DIGITS_CONTRACT], 2,
        "cannot name an output folder", model_name=".hidden"),
    "--out is a file": Case(lambda i: [*DIGITS, "--calib", str(i.few_photos()), "--out", str(i.path("a_file"))],
                            2, "is a file, not a folder",
                            setup=lambda i, mp: i.path("a_file").write_text("not a folder")),
    "another export writing to the same folder": Case(
        lambda i: [*DIGITS, "--calib", str(i.few_photos())], 2, "another mobile-export is writing to",
        setup=another_export_running),
    "disk full": Case(lambda i: [*DIGITS, "--calib", str(i.few_photos())], 2, "no space left on the disk holding",
                      setup=disk_full_while_saving_onnx),
    "op the target runtime lacks": Case(
        lambda i: ["--model", str(i.onnx_with_op_ncnn_lacks()), *DIGITS_CONTRACT, "--calib", str(i.few_photos()),
                   "--target", "ncnn", "--rebuild"], 2, "the model uses Det, which ncnn cannot run",
        model_name="determinant"),
    "converter crash": Case(
        lambda i: [*DIGITS, "--calib", str(i.few_photos()), "--target", "ncnn", "--rebuild"], 3,
        "pnnx (fp32) crashed (SIGSEGV)",
        setup=crashing_pnnx, extra_checks=[noise_is_summarized]),
    "converter timeout": Case(
        lambda i: [*DIGITS, "--calib", str(i.few_photos()), "--target", "ncnn", "--rebuild", "--timeout", "3"], 3,
        "pnnx (fp32) did not finish within 3 s", setup=hanging_pnnx, extra_checks=[sleeper_was_stopped]),
}


def test_every_exit_code_an_export_error_can_carry_is_the_outcome_of_a_case():
    """Each error class of the product (core/errors.py and any subclass a module adds) ends an export with its
    exit code; the table must show each of those endings, clean, at least once. The gate's exit 1 is no bad
    input (every artifact was made): test_end_to_end.py's test_failed_gate_exits_1_and_names_the_artifact."""
    import importlib
    import pkgutil

    from core.errors import GateFailed, MobileExportError

    for package in ("core", "graph", "targets", "validation", "exporter"):
        for module in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)  # a subclass exists only once its module is imported

    def subclasses(error_class):
        for subclass in error_class.__subclasses__():
            yield subclass
            yield from subclasses(subclass)

    shown = {case.exit_code for case in CASES.values()}
    unshown = {error.__qualname__: error.exit_code for error in subclasses(MobileExportError)
               if not issubclass(error, GateFailed) and error.exit_code not in shown}
    assert not unshown, f"no case ends an export with these errors' exit codes: {unshown}"


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_its_exit_code_and_message_and_leaves_the_output_folder_alone(
    name, tmp_path, digit_photo_folder, user_package, monkeypatch
):
    case = CASES[name]
    monkeypatch.chdir(user_package)
    monkeypatch.syspath_prepend(str(user_package))
    inputs = Inputs(tmp_path, digit_photo_folder, user_package)
    previous_export(inputs.out, case.model_name)
    before = folder_state(inputs.out)
    if case.setup:
        case.setup(inputs, monkeypatch)
    args = case.args(inputs)
    try:
        result = CliRunner().invoke(main, ["export", *args, *([] if "--out" in args else ["--out", str(inputs.out)])])
    finally:
        for lock in inputs.held_locks:
            lock.close()
    assert result.exit_code == case.exit_code, result.output[-3000:]
    assert case.message in result.output, result.output[-3000:]
    assert "fix:" in result.output and "Traceback" not in result.output
    assert folder_state(inputs.out) == before
    assert not list(inputs.out.rglob(".staging-*"))
    for check in case.extra_checks:
        check(inputs, result.output)


def test_debug_shows_the_traceback_of_an_expected_failure(tmp_path):
    quiet = CliRunner().invoke(main, ["export", "--model", "zoo:resnet152", "--out", str(tmp_path / "out")])
    loud = CliRunner().invoke(main, ["export", "--model", "zoo:resnet152", "--out", str(tmp_path / "out"), "--debug"])
    assert quiet.exit_code == loud.exit_code == 2
    assert "Traceback" not in quiet.output
    assert "Traceback" in loud.output and "InputError" in loud.output and "unknown zoo model" in loud.output


def test_usage_error_exits_2():
    result = CliRunner().invoke(main, ["export", "--target", "windows-phone"])
    assert result.exit_code == 2 and "windows-phone" in result.output


class RunsCode:
    """Unpickling this creates a folder: the stand-in for code a hostile checkpoint would run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.mkdir, (str(self.marker),)


def test_code_pickled_into_an_exported_program_is_not_run(tmp_path):
    """torch.export.load unpickles 'use_pickle' weights with weights_only=False; the tool must not."""
    import io
    import json
    import zipfile

    from core.errors import InputError
    from exporter.sources import load_model

    program = torch.export.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.zeros(1, 3, 8, 8),))
    clean, hostile = tmp_path / "clean.pt2", tmp_path / "hostile.pt2"
    torch.export.save(program, str(clean))
    marker = tmp_path / "code_ran"
    payload = io.BytesIO()
    torch.save(RunsCode(marker), payload)
    with zipfile.ZipFile(clean) as source, zipfile.ZipFile(hostile, "w") as target:
        for entry in source.infolist():
            data = source.read(entry)
            if entry.filename.endswith("_weights_config.json"):
                config = json.loads(data)
                next(iter(config["config"].values()))["use_pickle"] = True
                data = json.dumps(config).encode()
            elif entry.filename.endswith("/weights/weight_0"):
                data = payload.getvalue()
            target.writestr(entry, data)
    with pytest.raises(InputError, match="pickled Python objects"):
        load_model(str(hostile))
    assert not marker.exists()
    assert load_model(str(clean)).module is not None


def test_onnx_external_data_inside_the_model_folder_is_accepted(tmp_path, user_package):
    import onnx

    from exporter.sources import copy_checked_onnx, load_model

    inputs = Inputs(tmp_path, tmp_path, user_package)
    model = onnx.load(str(inputs.digits_onnx()))
    folder = tmp_path / "with_data"
    (folder / "weights").mkdir(parents=True)
    onnx.save(model, str(folder / "digits.onnx"), save_as_external_data=True, location="weights/all.bin",
              size_threshold=0)
    assert load_model(str(folder / "digits.onnx")).onnx_path == folder / "digits.onnx"
    copy_checked_onnx(folder / "digits.onnx", tmp_path / "self_contained.onnx")
    copied = onnx.load(str(tmp_path / "self_contained.onnx"), load_external_data=False)
    assert not any(t.external_data for t in copied.graph.initializer)


def test_a_truncated_onnx_model_exits_2_within_seconds_with_one_short_message(tmp_path, user_package):
    """The acceptance case, run as a user runs it: a fresh process, timed from start to exit."""
    import os
    import subprocess
    import time

    truncated = Inputs(tmp_path, tmp_path, user_package).truncated_onnx()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "export", "--model", str(truncated), "--input-shape", "1,3,32,32",
         "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    seconds = time.monotonic() - started
    message = [line for line in result.stderr.splitlines() if not line.startswith(("·", "✗"))]
    assert result.returncode == 2, result.stderr
    assert message[0].startswith("error:") and "truncated.onnx is not a valid ONNX model" in message[0]
    assert message[1].startswith("  fix:") and "truncated" in message[1] and len(message) == 2
    assert seconds < 10, f"took {seconds:.1f} s"
    assert not (tmp_path / "out").exists()
