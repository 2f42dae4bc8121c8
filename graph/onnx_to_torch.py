"""A PyTorch module regenerated from an ONNX graph, for converters that read PyTorch only (coremltools, ExecuTorch).

pnnx reads the ONNX file and writes a plain PyTorch re-creation of it: `model_pnnx.py` (a `Model` class
built from torch.nn layers and torch.nn.functional calls) and `model.pnnx.bin` (its weights, which the
class loads from that absolute path when constructed). The Python file is pnnx's output from the graph,
not code from the user's file. pnnx fuses and folds (e.g. batch norm into the convolution) on the way, so
the module is equal to the ONNX graph up to float rounding; parity, which compares the final artifact with
ONNX Runtime on the source ONNX file, covers this step too.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from core.artifact import ConversionJob, OnnxModel
from core.errors import ConverterError
from core.process import installed_executable, run_converter

# pnnx always writes these; naming each keeps them all in our folder instead of beside the source file.
_PNNX_OUTPUTS = {
    "pnnxpy": "model_pnnx.py", "pnnxbin": "model.pnnx.bin", "pnnxparam": "model.pnnx.param",
    "pnnxonnx": "model.pnnx.onnx", "ncnnparam": "model.ncnn.param", "ncnnbin": "model.ncnn.bin",
    "ncnnpy": "model_ncnn.py",
}


def torch_module_from_onnx(onnx: OnnxModel, folder: Path, log_path: Path, timeout_s: float):
    """Run pnnx on `onnx` inside `folder` and return the eval-mode torch.nn.Module it wrote."""
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / "source.onnx"
    source.write_bytes(onnx.path.read_bytes())  # pnnx writes a simplified copy beside its input
    shape = ",".join(str(d) for d in onnx.input_shape)
    run_converter(
        [installed_executable("pnnx"), str(source), f"inputshape=[{shape}]", "fp16=0",
         *(f"{key}={folder / name}" for key, name in _PNNX_OUTPUTS.items())],
        cwd=folder, log_path=log_path, timeout_s=timeout_s, what="pnnx (ONNX to PyTorch)",
    )
    python_file = folder / _PNNX_OUTPUTS["pnnxpy"]
    if not python_file.is_file():
        raise ConverterError("pnnx finished without writing the PyTorch module for the ONNX graph",
                             hint=f"the graph likely uses an op pnnx cannot express in PyTorch; see {log_path}")
    return _load_generated_module(python_file)


def _load_generated_module(python_file: Path):
    name = f"_pnnx_generated_{abs(hash(str(python_file)))}"
    spec = importlib.util.spec_from_file_location(name, python_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclass/trace machinery looks modules up by name
    try:
        spec.loader.exec_module(module)
        return module.Model().float().eval()
    except Exception as error:  # the generated file is pnnx's: any failure is the converter's
        raise ConverterError(f"the PyTorch module pnnx wrote does not load: {type(error).__name__}: {error}",
                             hint=f"see {python_file}; report the ONNX graph to pnnx") from None
    finally:
        sys.modules.pop(name, None)


def module_to_convert(job: ConversionJob):
    """The module a PyTorch-reading converter converts and where it came from: the user's, or one pnnx regenerated
    from the ONNX graph (in job.workdir/pnnx)."""
    if job.torch_module is not None:
        return job.torch_module, "PyTorch module"
    module = torch_module_from_onnx(job.onnx, job.workdir / "pnnx", job.log_path, job.timeout_s)
    return module, "PyTorch module regenerated from the ONNX graph by pnnx"
