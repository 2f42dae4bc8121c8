"""Google's ai-edge-quantizer, static int8 (`static_wi8_ai8`: int8 weights per channel, int8 activations, plain
min/max calibration), applied to a float .tflite, float input and output kept: one of the baselines of
bench/int8_suite.py.

Runs in its own virtualenv (`make venv-quantizer`: ai-edge-quantizer pins ai-edge-litert 2.3), so it imports
nothing of mobile-export: `.venv-quantizer/bin/python bench/aeq_int8.py FLOAT.tflite CALIBRATION.npy OUT.tflite`
with CALIBRATION.npy an N x H x W x C float32 array of preprocessed samples.
"""
from __future__ import annotations

import sys
import time

import numpy as np


def main(float_path: str, calibration_path: str, out_path: str) -> None:
    from ai_edge_quantizer import quantizer, recipe
    from ai_edge_litert.interpreter import Interpreter

    samples = np.load(calibration_path).astype(np.float32)
    interpreter = Interpreter(model_path=float_path)
    (signature,) = interpreter.get_signature_list()
    (input_name,) = interpreter.get_signature_list()[signature]["inputs"]
    started = time.perf_counter()
    qt = quantizer.Quantizer(float_path)
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    calibration = qt.calibrate({signature: [{input_name: sample[None]} for sample in samples]})
    qt.quantize(calibration).export_model(out_path, overwrite=True)
    print(f"quantized in {time.perf_counter() - started:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:4])
