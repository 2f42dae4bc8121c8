"""Opening an artifact for parity without letting a damaged file take the export down.

Runtimes load models in native code (LiteRT, ncnn, ONNX Runtime). On a truncated or corrupted file some of
them crash the interpreter (LiteRT segfaults on a truncated .tflite) or hang. So every artifact is first
opened and run once on zeros in a child process (`python -m exporter.loading REQUEST.json`); only when that
child finished cleanly is the artifact opened here. A crash, a hang or a typed error in the child becomes a
ConverterError (or the child's own InputError) naming the file.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from core.artifact import Artifact, Runner, every_output_call
from core.errors import ConverterError, InputError, MobileExportError

# A load and one inference of a mobile model take seconds; far longer means the runtime is stuck.
LOAD_CHECK_TIMEOUT_S = 300.0
REPORT_NAME = "load_check.json"


def open_checked(artifact: Artifact, input_shape: tuple[int, ...], *, log_path: Path,
                 timeout_s: float = LOAD_CHECK_TIMEOUT_S) -> Runner:
    """The artifact's runner, after a child process loaded and ran it once without trouble."""
    check_in_child(artifact, input_shape, log_path=log_path, timeout_s=timeout_s)
    return open_runner(artifact)


def open_runner(artifact: Artifact) -> Runner:
    from targets import get_target

    return get_target(artifact.runtime).load(artifact)


def check_in_child(artifact: Artifact, input_shape: tuple[int, ...], *, log_path: Path, timeout_s: float) -> None:
    from core.process import how_it_ended, log_tail, run_contained

    with tempfile.TemporaryDirectory(prefix="mobile-export-load-check-") as scratch:
        request = Path(scratch) / "request.json"
        request.write_text(json.dumps(_request(artifact, input_shape)))
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "a", encoding="utf-8", errors="replace") as log:
            log.write(f"\n# load check of {artifact.path.name} in a child process\n")
            log.flush()
            returncode = run_contained([sys.executable, "-m", "exporter.loading", str(request)], cwd=Path(scratch),
                                       output=log, timeout_s=timeout_s, env=_child_env())
        report = Path(scratch) / REPORT_NAME
        if report.is_file():
            raise _error_from(json.loads(report.read_text()))
    what = f"{artifact.runtime} loading {artifact.path.name}"
    if returncode is None:
        raise ConverterError(f"{what} did not finish within {timeout_s:.0f} s and was stopped",
                             hint=f"the file is likely damaged; re-export it (details in {log_path})")
    if returncode != 0:
        raise ConverterError(f"{what} {how_it_ended(returncode)}: the file is damaged or not a valid model\n"
                             f"{log_tail(log_path, 5)}", hint=f"re-export it; the runtime's output is in {log_path}")


def _request(artifact: Artifact, input_shape: tuple[int, ...]) -> dict:
    return {
        "path": str(artifact.path.resolve()), "runtime": artifact.runtime, "precision": artifact.precision,
        "companions": [str(p.resolve()) for p in artifact.companions], "details": artifact.details,
        "input_shape": list(input_shape),
    }


def _child_env() -> dict:
    import os

    from core.process import python_path_for_child

    return {**os.environ, "PYTHONPATH": python_path_for_child()}


def _error_from(report: dict) -> MobileExportError:
    kind = InputError if report["exit_code"] == InputError.exit_code else ConverterError
    return kind(report["message"], hint=report["hint"])


def _child_main(request_path: Path) -> None:
    request = json.loads(request_path.read_text())
    artifact = Artifact(path=Path(request["path"]), runtime=request["runtime"], precision=request["precision"],
                        companions=tuple(Path(p) for p in request["companions"]), details=request["details"])
    try:
        every_output_call(open_runner(artifact))(np.zeros(request["input_shape"], dtype=np.float32))
    except MobileExportError as error:
        report = {"exit_code": error.exit_code, "message": error.message, "hint": error.hint}
        (request_path.parent / REPORT_NAME).write_text(json.dumps(report))


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
