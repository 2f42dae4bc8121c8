"""Each bad input ends with exit code 2, one clear message, no traceback, and no output written."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from exporter.cli import main
from exporter.zoo.mobilenet_v2 import mobilenet_v2

DIGITS_CONTRACT = ["--input-shape", "1,3,32,32", "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25"]


def export(args: list[str], out: Path):
    return CliRunner().invoke(main, ["export", *args, "--out", str(out)])


@pytest.fixture()
def in_user_code(user_package, monkeypatch):
    monkeypatch.chdir(user_package)
    monkeypatch.syspath_prepend(str(user_package))


def bad_inputs(tmp: Path, digit_photo_folder: Path) -> dict[str, tuple[list[str], str]]:
    empty = tmp / "empty_photos"
    empty.mkdir()
    (empty / "notes.txt").write_text("no photos here")
    pickled = tmp / "whole_module.pt"
    torch.save(mobilenet_v2(num_classes=10), pickled)
    digits = ["--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT]
    return {
        "unknown model source": (["--model", "model.h5"], "unknown model source"),
        "unknown zoo model": (["--model", "zoo:resnet152"], "unknown zoo model"),
        "factory module missing": (["--model", "python:no_such_pkg.models:build"], "cannot import 'no_such_pkg.models'"),
        "factory not callable": (["--model", "python:my_pkg.my_mod:WEIGHTS"], "no callable 'WEIGHTS'"),
        "input shape not 4-D": ([*digits[:2], "--input-shape", "1,3,32", "--calib", str(digit_photo_folder)], "N,C,H,W"),
        "input shape the model rejects": (
            ["--model", "python:my_pkg.my_mod:build", "--input-shape", "1,1,32,32", "--mean", "0.5", "--std", "0.25",
             "--calib", str(digit_photo_folder)],
            "does not accept input shape (1, 1, 32, 32)",
        ),
        "empty calibration folder": ([*digits, "--calib", str(empty)], "contains no images"),
        "missing calibration folder": ([*digits, "--calib", str(tmp / "nowhere")], "does not exist"),
        "pickled checkpoint as model": (["--model", str(pickled)], "pickled Python object"),
        "pickled checkpoint as weights": (["--model", "zoo:mobilenet_v2", "--weights", str(pickled)], "pickled Python objects"),
    }


CASES = [
    "unknown model source", "unknown zoo model", "factory module missing", "factory not callable",
    "input shape not 4-D", "input shape the model rejects", "empty calibration folder", "missing calibration folder",
    "pickled checkpoint as model", "pickled checkpoint as weights",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_exits_2_with_a_message_and_writes_nothing(case, tmp_path, digit_photo_folder, in_user_code):
    args, expected_message = bad_inputs(tmp_path, digit_photo_folder)[case]
    out = tmp_path / "out"
    result = export(args, out)
    assert result.exit_code == 2, result.output
    assert expected_message in result.output
    assert "fix:" in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_usage_error_exits_2():
    result = CliRunner().invoke(main, ["export", "--target", "windows-phone"])
    assert result.exit_code == 2 and "windows-phone" in result.output
