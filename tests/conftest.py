"""Fixtures: a small model trained on real handwritten digits, packaged like a user's own code."""
from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import DIGIT_NAMES, DIGITS_CONTRACT, REPO, digit_photos, preprocess, run_cli


@pytest.fixture(scope="session")
def user_package(tmp_path_factory) -> Path:
    """A folder outside the repository holding my_pkg/my_mod.py with a trained DigitsNet. Returns the folder."""
    import torch

    root = tmp_path_factory.mktemp("user_code")
    package = root / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    shutil.copy(REPO / "tests" / "user_model_template.py", package / "my_mod.py")
    sys.path.insert(0, str(root))
    try:
        from my_pkg import my_mod
    finally:
        sys.path.remove(str(root))
    photos, labels = digit_photos()
    torch.manual_seed(0)
    model = my_mod.DigitsNet()
    inputs, targets = torch.from_numpy(preprocess(photos[:1500])), torch.from_numpy(labels[:1500]).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(250):
        batch = torch.randint(0, len(inputs), (64,))
        loss = torch.nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        held_out = model(torch.from_numpy(preprocess(photos[1500:]))).argmax(1).numpy()
    accuracy = float((held_out == labels[1500:]).mean())
    assert accuracy > 0.8, f"the digits model did not learn (held-out accuracy {accuracy:.2f})"
    torch.save(model.state_dict(), package / "digits_net.pt")
    sys.modules.pop("my_pkg.my_mod", None)
    sys.modules.pop("my_pkg", None)
    return root


@pytest.fixture(scope="session")
def digit_photo_folder(tmp_path_factory) -> Path:
    """60 digit photos as PNG and JPEG files, like a user's calibration folder."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("digit_photos")
    photos, labels = digit_photos(60)
    for index, (photo, label) in enumerate(zip(photos, labels)):
        suffix = "png" if index % 2 else "jpg"
        Image.fromarray(photo).save(folder / f"digit_{index:03d}_{label}.{suffix}", quality=95)
    return folder


@dataclass(frozen=True)
class AndroidRun:
    """The session's android export of the digits model: the CLI's CompletedProcess, OUT/my_mod, and the names
    in the folder it ran from, listed just before it ran."""
    result: subprocess.CompletedProcess
    model_dir: Path
    working_folder_before: list[str]


@pytest.fixture(scope="session")
def digits_android_run(user_package, digit_photo_folder, tmp_path_factory) -> AndroidRun:
    """The digits model exported with --target android (TFLite fp32/fp16/int8, ncnn), once per session; the
    export is not asserted to succeed here, so the test that checks it reports the CLI's own error."""
    out = tmp_path_factory.mktemp("digits_android")
    labels = out / "digit_names.txt"
    labels.write_text("\n".join(DIGIT_NAMES))
    before = sorted(p.name for p in user_package.iterdir())
    result = run_cli(
        ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT, "--calib", str(digit_photo_folder),
         "--labels", str(labels), "--target", "android", "--out", str(out)],
        cwd=user_package,
    )
    return AndroidRun(result, out / "my_mod", before)


@pytest.fixture(scope="session")
def digits_android_export(digits_android_run) -> Path:
    """OUT/my_mod of the session's android export. Tests that change files copy the folder first."""
    assert digits_android_run.result.returncode == 0, digits_android_run.result.stderr[-3000:]
    return digits_android_run.model_dir


@pytest.fixture(scope="session")
def ios_export(digits_android_export, digit_photo_folder, user_package, tmp_path_factory):
    """A copy of the session's android export, then the digits model exported into it with --target ios (Core ML
    fp32/fp16/int8 and 6-bit palettized), once per session: (the CLI's CompletedProcess, OUT/my_mod). One ios
    export serves both the Core ML tests and the tests of exports adding up in one folder."""
    out = tmp_path_factory.mktemp("ios_out")
    model_dir = out / "my_mod"
    shutil.copytree(digits_android_export, model_dir)
    labels = out / "digits.txt"
    labels.write_text("\n".join(DIGIT_NAMES) + "\n")
    result = run_cli(
        ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT, "--calib", str(digit_photo_folder),
         "--labels", str(labels), "--coreml-palettize", "--coreml-w8a8", "--target", "ios", "--out", str(out)],
        cwd=user_package,
    )
    return result, model_dir


@pytest.fixture(scope="session")
def several_outputs_export(user_package, digit_photo_folder, tmp_path_factory):
    """The trained digits model returning {"scores", "features", "detections"} (tests/user_model_template.py),
    exported with --target all, in the README's "your own model" form, once per session: (the CLI's
    CompletedProcess, OUT/build_several_outputs)."""
    out = tmp_path_factory.mktemp("several_outputs")
    result = run_cli(["--model", "python:my_pkg.my_mod:build_several_outputs", *DIGITS_CONTRACT, "--calib",
                      str(digit_photo_folder), "--target", "all", "--out", str(out)], cwd=user_package)
    return result, out / "build_several_outputs"
