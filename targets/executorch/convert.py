"""The ExecuTorch conversion: torch.export here, lowering to XNNPACK in ExecuTorch's own interpreter.

The PyTorch module (the user's, or one pnnx regenerated from an ONNX source: graph/onnx_to_torch.py) is
exported with torch.export in this process and saved; the child (lower.py) runs under .venv-executorch, where
numpy is 2.x, and writes model_fp32.pte and model_int8.pte. Both interpreters have torch 2.13.0, so the saved
program reads back as it was written.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from core.artifact import Artifact, ConversionJob
from core.errors import ConverterError
from core.process import child_result, python_path_for_child, run_converter
from graph.onnx_to_torch import module_to_convert
from targets.executorch.environment import executorch_python

FILE_FOR_PRECISION = {"fp32": "model_fp32.pte", "int8": "model_int8.pte"}
CHILD_RESULT = "lower_result.json"  # what the lowering child reports beyond the .pte files
PROGRAM_FILE = "program.pt2"
CALIBRATION_FILE = "calibration_nchw.npy"


def convert(job: ConversionJob, runtime: str) -> list[Artifact]:
    python = executorch_python()  # before any work: says how to install it
    module, source = module_to_convert(job)
    job.workdir.mkdir(parents=True, exist_ok=True)
    _export_program(module, job.onnx.input_shape, job.workdir / PROGRAM_FILE)
    np.save(job.workdir / CALIBRATION_FILE, np.ascontiguousarray(job.calibration, dtype=np.float32))
    request = job.workdir / "request.json"
    request.write_text(json.dumps({"program": str(job.workdir / PROGRAM_FILE),
                                   "calibration": str(job.workdir / CALIBRATION_FILE),
                                   "input_shape": list(job.onnx.input_shape)}))
    run_converter([str(python), "-m", "targets.executorch.lower", str(request)], cwd=job.workdir,
                  log_path=job.log_path, timeout_s=job.timeout_s, what="ExecuTorch lowering (XNNPACK)",
                  env={"PYTHONPATH": python_path_for_child()})
    records = child_result(job.workdir / CHILD_RESULT)
    return [_artifact(job, runtime, precision, source, records.get(precision, {})) for precision in FILE_FOR_PRECISION]


def _export_program(module, input_shape: tuple[int, ...], path: Path) -> None:
    import torch

    example = (torch.zeros(input_shape, dtype=torch.float32),)
    try:
        program = torch.export.export(module.eval(), example, strict=False)
    except Exception as error:  # torch.export raises many types (UserError, Unsupported, ...) for one cause
        raise ConverterError(
            f"torch.export could not capture the model for ExecuTorch: {type(error).__name__}: {str(error)[:400]}",
            hint="ExecuTorch needs a graph torch.export can trace: no data-dependent Python control flow in "
                 "forward(); or export without it (--target android / ios)",
        ) from error
    torch.export.save(program, str(path))


def _artifact(job: ConversionJob, runtime: str, precision: str, source: str, record: dict) -> Artifact:
    path = job.workdir / FILE_FOR_PRECISION[precision]
    if not path.is_file():
        raise ConverterError(f"ExecuTorch lowering finished without writing the {precision} program",
                             hint=f"see {job.log_path} for the lowering's own output")
    details = {
        "format": "ExecuTorch program (.pte), XNNPACK delegate",
        "source": source,
        "method": "forward",
        "input_shape": list(job.onnx.input_shape),
        "outputs": list(job.onnx.output_names),  # the program's outputs, in this order
        **record,
    }
    return Artifact(path=path, runtime=runtime, precision=precision, details=details)
