"""Which artifacts come out byte-identical when the same inputs are exported again.

Measured, never assumed: tests/test_fault_injection.py exports the digits model twice (Android) into two
fresh folders and requires every artifact listed True here to have the same SHA-256 both times. Measured on
2026-11-23 with the pinned converters (digits model, --target all, two runs):
- onnx, ncnn fp32/fp16, tflite fp32/fp16: identical.
- tflite int8: identical once the converter child runs with a fixed PYTHONHASHSEED (targets/_process.py);
  before that only its CONVERSION_METADATA buffer differed (a set of optimization modes, listed in hash order).
- coreml (every precision): not identical: coremltools writes fresh random UUIDs into each package's
  Manifest.json; the model spec and weights are identical.
Anything not listed (a new target or precision) is reported as not reproducible until measured.
"""
from __future__ import annotations

from core.artifact import Artifact

REPRODUCIBLE: dict[tuple[str, str], bool] = {
    ("onnx", "fp32"): True,
    ("tflite", "fp32"): True,
    ("tflite", "fp16"): True,
    ("tflite", "int8"): True,
    ("ncnn", "fp32"): True,
    ("ncnn", "fp16"): True,
    ("coreml", "fp32"): False,
    ("coreml", "fp16"): False,
    ("coreml", "int8"): False,
}


def is_reproducible(artifact: Artifact) -> bool:
    return REPRODUCIBLE.get((artifact.runtime, artifact.precision), False)
