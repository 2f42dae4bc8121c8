"""Truncated and bit-flipped files fed to every loader the tool uses: each must load or answer with a typed
error (InputError / ConverterError), never crash the interpreter, raise anything else, or hang.

Loaders: an ONNX --model (parse, external data, checker, ONNX Runtime, onnxsim), .tflite (LiteRT), ncnn
.param and .bin, calibration photos (PIL), --weights (torch.load weights_only) and calibration .npy. Native
runtimes (LiteRT, ncnn, ONNX Runtime) go through exporter.loading, which opens each file in a child first:
without it, LiteRT segfaults on a truncated .tflite. Each kind of file runs in a child process of this
test (`python tests/exporter/test_fuzz.py KIND ...`), so a crash is seen as one, with the case that caused it.
"""
from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

INPUT_SHAPE = (1, 3, 32, 32)
TRUNCATIONS = (0.0, 0.02, 0.1, 0.3, 0.5, 0.7, 0.9, 0.995)
BIT_FLIPS = ((0, 1), (1, 1), (2, 1), (3, 1), (4, 16), (5, 16), (6, 16), (7, 16))  # (seed, bits flipped)
LOAD_CHECK_TIMEOUT_S = 20  # the tool's own limit for a load check, shortened here: hangs end as errors
CHILD_TIMEOUT_S = 900  # a loader hanging past the tool's limits fails the test


def mutations(data: bytes) -> dict[str, bytes]:
    cases = {f"truncated_{int(fraction * 1000):03d}": data[: int(len(data) * fraction)] for fraction in TRUNCATIONS}
    for seed, bits in BIT_FLIPS:
        rng = random.Random(seed)
        flipped = bytearray(data)
        for _ in range(bits):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        cases[f"flipped_{bits}bits_seed{seed}"] = bytes(flipped)
    return cases


@pytest.fixture(scope="module")
def originals(digits_android_export, user_package, digit_photo_folder, tmp_path_factory) -> dict[str, Path]:
    import numpy as np

    folder = tmp_path_factory.mktemp("fuzz_originals")
    from_export = {"onnx": "my_mod.onnx", "tflite": "my_mod_int8.tflite", "ncnn_param": "my_mod_fp32.ncnn.param",
                   "ncnn_bin": "my_mod_fp32.ncnn.bin"}
    files = {kind: Path(shutil.copy(digits_android_export / name, folder / name)) for kind, name in from_export.items()}
    files["image"] = Path(shutil.copy(sorted(digit_photo_folder.glob("*.png"))[0], folder / "photo.png"))
    files["jpeg"] = Path(shutil.copy(sorted(digit_photo_folder.glob("*.jpg"))[0], folder / "photo.jpg"))
    files["weights"] = Path(shutil.copy(user_package / "my_pkg" / "digits_net.pt", folder / "weights.pt"))
    np.save(folder / "calibration.npy", np.random.default_rng(0).integers(0, 255, (6, 40, 40, 3), dtype=np.uint8))
    files["npy"] = folder / "calibration.npy"
    return files


@pytest.mark.parametrize("kind", ["onnx", "tflite", "ncnn_param", "ncnn_bin", "image", "jpeg", "weights", "npy"])
def test_damaged_files_get_an_answer_not_a_crash(kind, originals, tmp_path):
    cases_dir = tmp_path / "cases"
    cases_dir.mkdir()
    original = originals[kind]
    for name, data in mutations(original.read_bytes()).items():
        (cases_dir / f"{name}{original.suffix}").write_bytes(data)
    companions = [str(originals["ncnn_bin"] if kind == "ncnn_param" else originals["ncnn_param"])] \
        if kind.startswith("ncnn") else []
    child = subprocess.run(
        [sys.executable, __file__, kind, str(cases_dir), str(tmp_path / "work"), *companions],
        capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    outcomes = dict(line.split(" ", 2)[1:] for line in child.stdout.splitlines() if line.startswith("done "))
    started = [line.split(" ", 1)[1] for line in child.stdout.splitlines() if line.startswith("start ")]
    assert child.returncode == 0, (
        f"the loader for {kind} took the interpreter down (exit {child.returncode}) on {started[-1] if started else '?'}"
        f"\n{child.stderr[-2000:]}"
    )
    unexpected = {name: outcome for name, outcome in outcomes.items() if not outcome.startswith(("ok", "error"))}
    assert not unexpected, unexpected
    assert len(outcomes) == len(TRUNCATIONS) + len(BIT_FLIPS)
    assert outcomes[f"truncated_000{original.suffix}"].startswith("error")  # an empty file is never a model


# ---- the child: one kind of loader over every damaged file ------------------------------------------------


def _load(kind: str, path: Path, workdir: Path, companions: list[Path]) -> None:
    import numpy as np

    from core.contract import InputContract

    contract = InputContract(INPUT_SHAPE, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    if kind == "onnx":
        _load_onnx_model_source(path, workdir, contract)
    elif kind in ("tflite", "ncnn_param", "ncnn_bin"):
        _open_artifact(kind, path, workdir, companions).run(np.zeros(INPUT_SHAPE, np.float32))
    elif kind in ("image", "jpeg"):
        from exporter.images import load_photos

        folder = workdir / path.stem
        folder.mkdir(parents=True)
        shutil.copy(path, folder / path.name)
        load_photos(folder)
    elif kind == "weights":
        from exporter.sources import load_state_dict

        load_state_dict(path)
    elif kind == "npy":
        from exporter.datasets import DatasetPlan, build_datasets

        build_datasets(DatasetPlan(str(path), None), contract)


def _load_onnx_model_source(path: Path, workdir: Path, contract) -> None:
    """What the pipeline does with an ONNX --model before any converter sees it."""
    import numpy as np

    from exporter import onnx_stage
    from exporter.loading import open_checked
    from exporter.sources import copy_checked_onnx, load_model
    from targets import interchange_target

    load_model(str(path))
    staged = workdir / path.stem / "source.onnx"
    staged.parent.mkdir(parents=True)
    copy_checked_onnx(path, staged)
    artifact = interchange_target().interchange_artifact(onnx_stage.describe(staged, contract))
    runner = open_checked(artifact, INPUT_SHAPE, log_path=workdir / "onnx.log", timeout_s=LOAD_CHECK_TIMEOUT_S)
    runner.run(np.zeros(INPUT_SHAPE, np.float32))
    onnx_stage.simplify_and_check(staged, workdir / "onnx.log")


def _open_artifact(kind: str, path: Path, workdir: Path, companions: list[Path]):
    from core.artifact import Artifact
    from exporter.loading import open_checked

    if kind == "tflite":
        artifact = Artifact(path=path, runtime="tflite", precision="int8")
    elif kind == "ncnn_param":
        artifact = Artifact(path=path, runtime="ncnn", precision="fp32", companions=(companions[0],))
    else:
        artifact = Artifact(path=companions[0], runtime="ncnn", precision="fp32", companions=(path,))
    return open_checked(artifact, INPUT_SHAPE, log_path=workdir / f"{kind}.log", timeout_s=LOAD_CHECK_TIMEOUT_S)


def _child_main(kind: str, cases_dir: Path, workdir: Path, companions: list[Path]) -> None:
    from core.errors import MobileExportError

    workdir.mkdir(parents=True, exist_ok=True)
    for path in sorted(cases_dir.iterdir()):
        print(f"start {path.name}", flush=True)
        try:
            _load(kind, path, workdir, companions)
            outcome = "ok"
        except MobileExportError as error:
            outcome = f"error {type(error).__name__}: {error.message.splitlines()[0][:120]}"
        except Exception as error:  # noqa: BLE001 (exactly what the test looks for)
            outcome = f"UNEXPECTED {type(error).__name__}: {str(error)[:200]}"
        print(f"done {path.name} {outcome}", flush=True)


if __name__ == "__main__":
    _child_main(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), [Path(p) for p in sys.argv[4:]])
