"""coremltools, imported quietly, and which evaluator runs ML Programs on this machine."""
from __future__ import annotations

import os
import sys

from core.capture import output_to
from core.errors import ConverterError

EVALUATOR_RUNTIME, EVALUATOR_REFERENCE = "coreml-runtime", "reference"


def import_coremltools():
    """coremltools imports TensorFlow when it is installed (2.4 s of its 7.4 s import here), for converters of
    TensorFlow models we never use: we convert traced PyTorch. So TensorFlow is hidden from it while it imports,
    unless this process imported TensorFlow already. It also prints to the terminal while importing."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    hide_tensorflow = "tensorflow" not in sys.modules
    try:
        if hide_tensorflow:
            sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError: coremltools skips it
        with output_to(os.devnull):
            import coremltools
    except ImportError as error:
        raise ConverterError(f"coremltools is not installed ({error})",
                             hint="run `make venv` to install the pinned tools") from None
    finally:
        if hide_tensorflow:
            del sys.modules["tensorflow"]
    return coremltools


def evaluator_name(platform: str | None = None) -> str:
    """The real Core ML runtime exists on macOS only; everywhere else the reference evaluator runs."""
    return EVALUATOR_RUNTIME if (platform or sys.platform) == "darwin" else EVALUATOR_REFERENCE
