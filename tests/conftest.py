"""Fixtures: a small model trained on real handwritten digits, packaged like a user's own code."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import DIGIT_NAMES, DIGITS_CONTRACT, MEAN, REPO, STD, digit_photos, preprocess, run_cli


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


@pytest.fixture(scope="session")
def digits_android_export(user_package, digit_photo_folder, tmp_path_factory) -> Path:
    """The digits model exported with --target android (TFLite fp32/fp16/int8, ncnn), once per session.
    Returns OUT/my_mod. Tests that change files copy the folder first."""
    import os
    import subprocess

    out = tmp_path_factory.mktemp("digits_android")
    labels = out / "digit_names.txt"
    labels.write_text("\n".join(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]))
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "export", "--model", "python:my_pkg.my_mod:build", "--input-shape",
         "1,3,32,32", "--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD)), "--calib",
         str(digit_photo_folder), "--labels", str(labels), "--target", "android", "--out", str(out)],
        cwd=user_package, capture_output=True, text=True, timeout=1200, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "my_mod"


@pytest.fixture(scope="session")
def ios_export(user_package, digit_photo_folder, tmp_path_factory):
    """The digits model exported with --target ios (Core ML fp32/fp16/int8 and 6-bit palettized), once per
    session: (the CLI's CompletedProcess, OUT/my_mod)."""
    out = tmp_path_factory.mktemp("ios_out")
    labels = out / "digits.txt"
    labels.write_text("\n".join(DIGIT_NAMES) + "\n")
    result = run_cli(
        ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT, "--calib", str(digit_photo_folder),
         "--labels", str(labels), "--coreml-palettize", "--target", "ios", "--out", str(out)],
        cwd=user_package,
    )
    return result, out / "my_mod"
