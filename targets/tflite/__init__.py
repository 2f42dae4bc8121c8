"""LiteRT (TFLite) for Android: fp32, fp16 and full-integer int8 .tflite files, run by ai-edge-litert.

convert.py runs onnx2tf and TensorFlow's converter in a child process; int8.py is our int8 recipe;
runner.py runs the files; explain.py, snippet.py and device.py are what explain, the bundle and
`bench --device` need of this runtime.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from core.artifact import Artifact, ConversionJob
from core.target import DeviceMeasurement, DeviceRun, SnippetContract, Target


class TFLiteTarget(Target):
    name = "tflite"
    display_name = "LiteRT (TFLite)"
    platforms = ("android",)
    profile_runtime = "tflite"
    # Measured on 2026-11-23 (digits model, two exports into fresh folders): identical bytes for every
    # precision, int8 included once the converter child runs with a fixed PYTHONHASHSEED (core/process.py).
    reproducible_precisions = frozenset({"fp32", "fp16", "int8"})
    layout_ops = ("TRANSPOSE",)
    pad_ops = ("PAD", "PADV2", "MIRROR_PAD")
    benchmark_binary = "benchmark_model"
    runtime_package = "ai-edge-litert"
    runtime_module = "ai_edge_litert.interpreter"

    def convert(self, job: ConversionJob) -> list[Artifact]:
        from targets.tflite.convert import convert

        return convert(job, self.runtime)

    def load(self, artifact: Artifact):
        from targets.tflite.runner import LiteRTRunner

        return LiteRTRunner(artifact.path, outputs=artifact.details.get("outputs"))

    def tool_versions(self) -> dict[str, str]:
        return {name: metadata.version(name) for name in ("onnx2tf", "tensorflow", "ai-edge-litert")}

    def timing_runner(self, artifact: Artifact, threads: int):
        from targets.tflite.runner import LiteRTRunner

        runner = LiteRTRunner(artifact.path, threads=threads, outputs=artifact.details.get("outputs"))
        took_graph = "DELEGATE" in runner.op_names()
        delegate = "XNNPACK (LiteRT's default CPU delegate)" if took_graph else "none: built-in kernels"
        return runner, {"delegate": delegate, "num_threads": threads}

    explainable = True

    def explain_graph(self, artifact: Artifact):
        from targets.tflite.explain import TFLiteGraph

        return TFLiteGraph(artifact.path.read_bytes())

    def snippets(self, contract: SnippetContract, entry: dict, model_dir: Path) -> dict[str, str]:
        from targets.tflite.snippet import snippets

        return snippets(contract, entry, model_dir)

    def run_on_device(self, run: DeviceRun) -> DeviceMeasurement:
        from targets.tflite.device import run_benchmark_model

        return run_benchmark_model(run)
