"""TFLite converters side by side: ours (onnx2tf 1.29 + TensorFlow's converter, our int8 recipe) against
litert-torch (PyTorch -> .tflite directly, no TensorFlow) with Google's ai-edge-quantizer for int8.

    make venv-quantizer   # ai-edge-quantizer, litert-torch and ai-edge-litert 2.3: numpy 2, no TensorFlow
    .venv/bin/python bench/tflite_converters.py --out /tmp/tflite_converters [--models mobilenet_v2 squeezenet1_1]

Per zoo model (default: the ImageNet MobileNetV2 and the four digit-trained models whose weights ship in the
repository): our path is `mobile-export export --target tflite` (its manifest gives the seconds of the TFLite
stage); litert-torch converts the same PyTorch module (fp32; fp16 weights by ai-edge-quantizer's float casting;
int8 by its static_wi8_ai8 recipe with min/max calibration on the export's own calibration samples, which makes the
input and output int8 as well: fed and read with the file's own scales), timed from the module to the file. Every .tflite file, ours and theirs, is then run in the same
runtime (ai-edge-litert 2.3, 2 threads) on the export's own held-out validation samples and compared with ONNX
Runtime on the export's ONNX model by core/parity.py, the export's gate; latency is the median of timed runs
after a warm-up in that same runtime, so it compares files, not runtimes. onnx2tf 2.x (its TensorFlow-free
path) is not on the package index this machine reaches: the table says so rather than leaving the row out.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.manifest import read_manifest  # noqa: E402
from core.parity import DEFAULT_THRESHOLDS, compare_outputs  # noqa: E402
from core.process import python_path_for_child  # noqa: E402
from targets import interchange_target  # noqa: E402

MOBILE_EXPORT = REPO / ".venv" / "bin" / "mobile-export"
LITERT_PYTHON = REPO / ".venv-quantizer" / "bin" / "python"
DEFAULT_MODELS = ("mobilenet_v2", "shufflenet_v2_x0_5", "mobilenet_v3_small", "squeezenet1_1", "mobilenet_v1_0_25_128")
OURS = {"fp32": "_fp32.tflite", "fp16": "_fp16.tflite", "int8": "_int8.tflite"}
ONNX2TF_2 = "onnx2tf 2.x (no TensorFlow)"


def prepare(name: str, out: Path) -> dict:
    """Our export of the model, and the module, calibration and validation samples litert-torch gets."""
    import torch

    from exporter.config import build_spec
    from exporter.datasets import DatasetPlan, build_datasets
    from exporter.sources import load_model

    folder = out / "ours" / name
    if not (folder / "manifest.json").is_file():
        started = time.perf_counter()
        subprocess.run([str(MOBILE_EXPORT), "export", "--model", f"zoo:{name}", "--target", "tflite", "--out",
                        str(out / "ours")], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        print(f"  exported {name} with mobile-export in {time.perf_counter() - started:.0f} s", flush=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    spec = build_spec({"model": f"zoo:{name}", "target": "tflite"})
    datasets = build_datasets(DatasetPlan(spec.calib, spec.val, calibration_samples=spec.calibration_samples),
                              spec.contract)
    scratch = out / "litert_torch" / name
    scratch.mkdir(parents=True, exist_ok=True)
    np.save(scratch / "calibration.npy", datasets.calibration.astype(np.float32))
    np.save(scratch / "validation.npy", datasets.validation.astype(np.float32))
    module = load_model(f"zoo:{name}").module.eval()
    program = torch.export.export(module, (torch.from_numpy(datasets.validation[:1]),), strict=False)
    torch.export.save(program, str(scratch / "program.pt2"))
    return {"name": name, "folder": folder, "scratch": scratch, "manifest": manifest,
            "validation": datasets.validation.astype(np.float32)}


def reference_outputs(prepared: dict) -> np.ndarray:
    """ONNX Runtime on the export's ONNX model, run as the export's parity runs it."""
    manifest = read_manifest(prepared["folder"])
    reference = interchange_target()
    runner = reference.load(manifest.of_runtime(reference.name)[0].artifact(prepared["folder"]))
    return runner.run(prepared["validation"])


def run_child(prepared: dict, python: Path) -> dict:
    """litert-torch's conversions, then every .tflite run in ai-edge-litert 2.3 (bench/litert_torch_child.py)."""
    ours = {precision: str(prepared["folder"] / f"{prepared['name']}{suffix}") for precision, suffix in OURS.items()}
    request = prepared["scratch"] / "request.json"
    request.write_text(json.dumps({"scratch": str(prepared["scratch"]), "ours": ours}))
    subprocess.run([str(python), str(REPO / "bench" / "litert_torch_child.py"), str(request)], check=True,
                   env={**os.environ, "PYTHONPATH": python_path_for_child()})
    return json.loads((prepared["scratch"] / "result.json").read_text())


def rows_of(prepared: dict, child: dict) -> list[dict]:
    reference = {"output": reference_outputs(prepared)}
    stage = prepared["manifest"].get("stage_seconds", {})
    ours_seconds = next((seconds for stage_name, seconds in stage.items() if "tflite" in stage_name), None)
    rows = []
    for record in child["files"]:
        outputs = np.load(record["outputs"])
        parity = compare_outputs(reference, {"output": outputs.reshape(reference["output"].shape)},
                                 DEFAULT_THRESHOLDS[record["precision"]])
        seconds = ours_seconds if record["path"] == "ours" else record.get("convert_seconds")
        rows.append({"model": prepared["name"], "path": record["path"], "precision": record["precision"],
                     "convert_seconds": seconds, "bytes": record["bytes"], "cosine": parity.cosine,
                     "top1_agreement": parity.top1_agreement, "passed": parity.passed,
                     "transposes": record["transposes"], "pads": record["pads"], "latency_ms": record["latency_ms"],
                     "input_layout": record["input_layout"]})
    rows += [{"model": prepared["name"], "path": "litert-torch", "precision": precision, "failed": reason}
             for precision, reason in child.get("failed", {}).items()]
    return rows


def venv_size(folder: Path) -> str:
    if not folder.is_dir():
        return "not installed"
    return subprocess.run(["du", "-sh", str(folder)], capture_output=True, text=True).stdout.split()[0]


def table(rows: list[dict]) -> str:
    lines = ["| model | path | precision | convert s | bytes | cosine | top-1 | gate | TRANSPOSE | PAD | input | host ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "failed" in row:
            lines.append(f"| {row['model']} | {row['path']} | {row['precision']} | not made: {row['failed']} |"
                         " | | | | | | | |")
            continue
        seconds = "-" if row["convert_seconds"] is None else f"{row['convert_seconds']:.1f}"
        top1 = "-" if row["top1_agreement"] is None else f"{row['top1_agreement']:.3f}"
        lines.append(f"| {row['model']} | {row['path']} | {row['precision']} | {seconds} | {row['bytes']:,} | "
                     f"{row['cosine']:.6f} | {top1} | {'pass' if row['passed'] else 'FAIL'} | {row['transposes']} | "
                     f"{row['pads']} | {row['input_layout']} | {row['latency_ms']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/tflite_converters"))
    parser.add_argument("--litert-python", type=Path, default=LITERT_PYTHON,
                        help="a Python with litert-torch, ai-edge-quantizer and ai-edge-litert 2.3")
    args = parser.parse_args()
    if not args.litert_python.is_file():
        sys.exit(f"{args.litert_python} is missing: run `make venv-quantizer` first")
    rows = []
    for name in args.models:
        print(f"{name}:", flush=True)
        prepared = prepare(name, args.out)
        rows += rows_of(prepared, run_child(prepared, args.litert_python))
    sizes = {".venv (onnx2tf 1.29 + TensorFlow 2.19, our path)": venv_size(REPO / ".venv"),
             "litert-torch 0.10 + ai-edge-quantizer 0.10": venv_size(args.litert_python.parents[1])}
    text = table(rows) + "\n\nvirtualenvs: " + "; ".join(f"{k}: {v}" for k, v in sizes.items()) + \
        f"\n{ONNX2TF_2}: not on the package index this machine reaches (newest there: 1.29.24); not measured."
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tflite_converters.json").write_text(json.dumps({"rows": rows, "venv_sizes": sizes}, indent=1))
    (args.out / "tflite_converters.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
