"""Adding a runtime is one new folder under targets/ and one registry line, nothing else.

The product code is copied, a toy runtime is added the way the house says (targets/toy/ and one line in
targets/__init__.py's REGISTRY), and `mobile-export export --target toyland` runs in the copy: the toy's
artifact is converted, opened in a child process, run for parity, published, listed in the manifest, given
its snippet in bundle.zip and named in the report, with no other file of the copy touched.
"""
from __future__ import annotations

import difflib
import filecmp
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.helpers import DIGITS_CONTRACT, REPO

PRODUCT = ("core", "graph", "targets", "validation", "exporter", "profiles")
REGISTRY_LINE = '    "targets.toy:ToyTarget",\n'
# The toy "runtime" runs ONNX bytes it stores under its own file extension: a real conversion, load and run,
# through nothing but the target interface.
TOY_TARGET = '''"""A toy runtime for the test: ONNX bytes under its own extension, run by ONNX Runtime."""
from __future__ import annotations

from core.artifact import Artifact, ConversionJob, run_in_chunks
from core.target import Target


class ToyTarget(Target):
    name = "toy"
    display_name = "Toy runtime"
    platforms = ("toyland",)
    reproducible_precisions = frozenset({"fp32"})

    def convert(self, job: ConversionJob) -> list[Artifact]:
        path = job.workdir / "model.toy"
        path.write_bytes(job.onnx.path.read_bytes())
        return [Artifact(path, self.name, "fp32", details={"input_name": job.onnx.input_name})]

    def load(self, artifact: Artifact):
        import onnxruntime

        session = onnxruntime.InferenceSession(artifact.path.read_bytes(), providers=["CPUExecutionProvider"])
        name = artifact.details["input_name"]

        class Runner:
            def run(self, batch):
                return run_in_chunks(lambda chunk: session.run(None, {name: chunk})[0], batch, 1)

        return Runner()

    def tool_versions(self) -> dict[str, str]:
        return {"toy": "1.0"}

    def snippets(self, contract, entry, model_dir):
        return {"toyland/Toy.txt": f"load {entry['path']}, feed {contract.width}x{contract.height}\\n"}
'''


def _copy_product(destination: Path) -> None:
    for folder in PRODUCT:
        shutil.copytree(REPO / folder, destination / folder, ignore=shutil.ignore_patterns("__pycache__"))


def _changed_files(original: Path, copy: Path) -> list[str]:
    changed = []
    for folder in PRODUCT:
        comparison = filecmp.dircmp(original / folder, copy / folder, ignore=["__pycache__"])
        pending = [(comparison, Path(folder))]
        while pending:
            current, relative = pending.pop()
            changed += [str(relative / name) for name in current.diff_files + current.left_only + current.right_only]
            pending += [(sub, relative / name) for name, sub in current.subdirs.items()]
    return sorted(changed)


def test_a_toy_runtime_is_one_folder_and_one_registry_line(tmp_path, user_package, digit_photo_folder):
    copy = tmp_path / "product"
    _copy_product(copy)
    (copy / "targets" / "toy").mkdir()
    (copy / "targets" / "toy" / "__init__.py").write_text(TOY_TARGET)
    registry = copy / "targets" / "__init__.py"
    lines = registry.read_text().splitlines(keepends=True)
    closing = lines.index(")\n", next(i for i, line in enumerate(lines) if line.startswith("REGISTRY")))
    registry.write_text("".join(lines[:closing] + [REGISTRY_LINE] + lines[closing:]))

    assert _changed_files(REPO, copy) == ["targets/__init__.py", "targets/toy"]
    diff = [line for line in difflib.unified_diff((REPO / "targets" / "__init__.py").read_text().splitlines(),
                                                  registry.read_text().splitlines(), lineterm="", n=0)
            if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    assert diff == ["+" + REGISTRY_LINE.rstrip("\n")]

    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "export", "--model", "python:my_pkg.my_mod:build", *DIGITS_CONTRACT,
         "--calib", str(digit_photo_folder), "--target", "toyland", "--out", str(out)],
        cwd=user_package, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(copy)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    model_dir = out / "my_mod"
    manifest = json.loads((model_dir / "manifest.json").read_text())
    toy = [a for a in manifest["artifacts"] if a["runtime"] == "toy"]
    assert len(toy) == 1 and toy[0]["target"] == "toyland" and toy[0]["parity"]["passed"]
    assert toy[0]["parity"]["cosine"] > 0.99999 and toy[0]["reproducible"] is True
    assert manifest["tools"]["toy"] == "1.0"
    with zipfile.ZipFile(model_dir / "bundle.zip") as bundle:
        names = bundle.namelist()
        assert toy[0]["path"] in names
        assert bundle.read("toyland/Toy.txt").decode() == f"load {toy[0]['path']}, feed 32x32\n"
    assert "my_mod_fp32.toy" in (model_dir / "report.md").read_text()
