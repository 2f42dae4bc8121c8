"""bench/tflite_converters.py's child, run by .venv-quantizer's Python (litert-torch 0.10, ai-edge-quantizer 0.10,
ai-edge-litert 2.3, numpy 2): `python bench/litert_torch_child.py REQUEST.json`, this checkout on PYTHONPATH. Of
mobile-export it imports only targets/tflite/runner.py's int8 I/O (de)quantization (numpy-only).

Converts the saved program with litert-torch (NHWC input through litert_torch.to_channel_last_io, as an app
feeds a bitmap), makes fp16 (float casting) and int8 (static_wi8_ai8, min/max on the calibration samples; that
recipe makes the input and output int8 too) with ai-edge-quantizer, then runs every .tflite file, ours included, on the validation samples
in this runtime with 2 threads: outputs for the parent to score, op counts and a median latency.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

THREADS = 2
WARMUP_RUNS, TIMED_RUNS = 10, 50


def main(request_path: Path) -> None:
    request = json.loads(request_path.read_text())
    scratch = Path(request["scratch"])
    calibration = np.load(scratch / "calibration.npy")
    theirs, seconds, failed = convert_with_litert_torch(scratch, calibration)
    files = [evaluate(path, "ours", precision, scratch) for precision, path in request["ours"].items()]
    files += [{**evaluate(path, "litert-torch", precision, scratch), "convert_seconds": seconds[precision]}
              for precision, path in theirs.items()]
    (scratch / "result.json").write_text(json.dumps({"files": files, "failed": failed}))


def convert_with_litert_torch(scratch: Path, calibration: np.ndarray):
    import litert_torch
    import torch

    paths, seconds, failed = {}, {}, {}
    started = time.perf_counter()
    module = torch.export.load(str(scratch / "program.pt2")).module()
    channel_last = litert_torch.to_channel_last_io(module, args=[0])
    sample = torch.from_numpy(calibration[:1]).permute(0, 2, 3, 1).contiguous()
    paths["fp32"] = scratch / "litert_torch_fp32.tflite"
    litert_torch.convert(channel_last, (sample,)).export(str(paths["fp32"]))
    seconds["fp32"] = time.perf_counter() - started
    for precision, make in (("fp16", _fp16), ("int8", _int8)):
        started = time.perf_counter()
        try:
            paths[precision] = make(paths["fp32"], scratch, calibration)
            seconds[precision] = seconds["fp32"] + time.perf_counter() - started
        except Exception as error:  # reported in the table: a path that cannot make a precision is a finding
            failed[precision] = f"{type(error).__name__}: {str(error)[:160]}"
    return paths, seconds, failed


def _fp16(fp32: Path, scratch: Path, calibration: np.ndarray) -> Path:
    from ai_edge_quantizer import qtyping, quantizer, recipe, recipe_manager

    manager = recipe_manager.RecipeManager()
    manager.add_quantization_config(
        regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
        algorithm_key=recipe.AlgorithmName.FLOAT_CASTING,
        op_config=qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True))
    path = scratch / "litert_torch_fp16.tflite"
    model = quantizer.Quantizer(str(fp32))
    model.load_quantization_recipe(manager.get_quantization_recipe())
    model.quantize().export_model(str(path), overwrite=True)
    return path


def _int8(fp32: Path, scratch: Path, calibration: np.ndarray) -> Path:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    (signature,) = Interpreter(model_path=str(fp32)).get_signature_list()
    (input_name,) = Interpreter(model_path=str(fp32)).get_signature_list()[signature]["inputs"]
    samples = np.ascontiguousarray(calibration.transpose(0, 2, 3, 1))
    path = scratch / "litert_torch_int8.tflite"
    model = quantizer.Quantizer(str(fp32))
    model.load_quantization_recipe(recipe.static_wi8_ai8())
    statistics = model.calibrate({signature: [{input_name: sample[None]} for sample in samples]})
    model.quantize(statistics).export_model(str(path), overwrite=True)
    return path


def evaluate(path, label: str, precision: str, scratch: Path) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    from targets.tflite.runner import dequantize, quantize

    path = Path(path)
    interpreter = Interpreter(model_path=str(path), num_threads=THREADS)
    interpreter.allocate_tensors()
    (feed,), (fetch,) = interpreter.get_input_details(), interpreter.get_output_details()
    validation = np.load(scratch / "validation.npy")
    channels_last = feed["shape"][-1] == validation.shape[1] and feed["shape"][1] != validation.shape[1]
    samples = validation.transpose(0, 2, 3, 1) if channels_last else validation
    outputs = []
    for sample in samples:
        interpreter.set_tensor(feed["index"], quantize(sample[None], feed))  # int8 I/O with the file's own scale
        interpreter.invoke()
        outputs.append(dequantize(interpreter.get_tensor(fetch["index"]), fetch))
    timings = []
    for run in range(WARMUP_RUNS + TIMED_RUNS):
        started = time.perf_counter()
        interpreter.invoke()
        if run >= WARMUP_RUNS:
            timings.append((time.perf_counter() - started) * 1000)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    saved = scratch / f"outputs_{label}_{precision}.npy"
    np.save(saved, np.concatenate(outputs))
    return {"path": label, "precision": precision, "file": str(path), "bytes": path.stat().st_size,
            "outputs": str(saved), "transposes": ops.count("TRANSPOSE"),
            "pads": sum(ops.count(name) for name in ("PAD", "PADV2", "MIRROR_PAD")),
            "latency_ms": float(np.median(timings)), "input_layout": "NHWC" if channels_last else "NCHW"}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
