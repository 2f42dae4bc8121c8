"""Where ExecuTorch runs: a virtualenv of its own, because ExecuTorch 1.4+ needs numpy >= 2 and onnx2tf, in the
main virtualenv, pins numpy 1.26.4. `make venv` installs it from requirements-executorch.lock.

Everything that imports executorch (lowering, the runtime) runs under that interpreter: as a converter child
(lower.py), as the worker a runner talks to from the main virtualenv (worker.py), or in-process when this
interpreter is that one (the host benchmark's child runs there, so timings hold no hand-off between processes).
"""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from core.errors import ConverterError

VENV_FOLDER = ".venv-executorch"
PYTHON_VARIABLE = "MOBILE_EXPORT_EXECUTORCH_PYTHON"  # another interpreter with executorch installed
PACKAGES = ("executorch", "torch", "torchao")


def executorch_python() -> Path:
    """The interpreter with executorch installed: $MOBILE_EXPORT_EXECUTORCH_PYTHON, else the checkout's
    .venv-executorch. Raises ConverterError saying how to install it."""
    chosen = os.environ.get(PYTHON_VARIABLE)
    path = Path(chosen) if chosen else Path(__file__).resolve().parents[2] / VENV_FOLDER / "bin" / "python"
    if not path.is_file():
        raise ConverterError(
            f"ExecuTorch is not installed ({path} does not exist)",
            hint=f"run `make venv`: it installs ExecuTorch into {VENV_FOLDER}/ (it needs numpy 2, the main "
                 f"virtualenv has numpy 1.26 for onnx2tf); or set {PYTHON_VARIABLE} to a Python that has executorch",
        )
    return path


def runs_here() -> bool:
    """Whether this interpreter imports executorch itself (the host benchmark's child does)."""
    try:
        metadata.version("executorch")
    except metadata.PackageNotFoundError:
        return False
    return True


def host_python() -> str:
    return sys.executable if runs_here() else str(executorch_python())


@lru_cache(maxsize=None)
def installed_versions() -> dict[str, str]:
    """The versions of executorch, torch and torchao in ExecuTorch's virtualenv, read from its metadata."""
    python = executorch_python()
    site_packages = sorted(python.parents[1].glob("lib/python*/site-packages"))  # the venv's, not its base's
    found = {}
    for package in PACKAGES:
        distributions = list(metadata.distributions(name=package, path=[str(p) for p in site_packages]))
        found[package] = distributions[0].version if distributions else "not installed"
    return found
