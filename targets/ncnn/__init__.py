"""ncnn for Android and Linux boards: fp32 and fp16-storage .param/.bin pairs made by pnnx, and an int8 pair
written from the fp32 one, run by the ncnn wheel.

convert.py runs pnnx; int8.py writes the int8 pair (weights.py reads the fp32 .bin); runner.py runs the pairs; explain.py, snippet.py and device.py are what explain, the
bundle and `bench --device` need of this runtime.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from core.artifact import Artifact, ConversionJob
from core.target import DeviceMeasurement, DeviceRun, SnippetContract, Target

# The options the runner reports with a host timing, as ncnn.Option names them.
TIMING_OPTIONS = ("num_threads", "use_fp16_storage", "use_fp16_packed", "use_fp16_arithmetic", "use_bf16_storage",
                  "use_int8_inference", "use_packing_layout", "use_winograd_convolution", "use_sgemm_convolution", "use_vulkan_compute")


class NcnnTarget(Target):
    name = "ncnn"
    display_name = "ncnn"
    platforms = ("android",)
    profile_runtime = "ncnn"
    # fp32/fp16 measured on 2026-11-23, two exports; int8 on 2026-12-06 (bench/reproducibility.py, 1/2/4 threads and
    # MKL on its AVX2 path): its calibration runs ncnn with one thread and snaps thresholds to a grid (int8.py)
    reproducible_precisions = frozenset({"fp32", "fp16", "int8"})
    layout_ops = ("Permute",)
    pad_ops = ("Padding",)
    benchmark_binary = "benchncnn"
    runtime_package = "ncnn"
    runtime_module = "ncnn"

    def convert(self, job: ConversionJob) -> list[Artifact]:
        from targets.ncnn.convert import convert

        return convert(job, self.runtime)

    def load(self, artifact: Artifact):
        from targets.ncnn.runner import NcnnRunner, recorded_blobs

        return NcnnRunner(artifact.path, artifact.companions[0], artifact.precision,
                          outputs=recorded_blobs(artifact.details))

    def tool_versions(self) -> dict[str, str]:
        return {"pnnx": metadata.version("pnnx"), "ncnn": metadata.version("ncnn")}

    def timing_runner(self, artifact: Artifact, threads: int):
        from targets.ncnn.runner import NcnnRunner, recorded_blobs

        runner = NcnnRunner(artifact.path, artifact.companions[0], artifact.precision, threads=threads,
                            outputs=recorded_blobs(artifact.details))
        return runner, {key: getattr(runner.options, key) for key in TIMING_OPTIONS}

    explainable = True

    def explain_graph(self, artifact: Artifact):
        from targets.ncnn.explain import NcnnGraph

        return NcnnGraph(artifact.path, artifact.companions[0], artifact.precision)

    def snippets(self, contract: SnippetContract, entry: dict, model_dir: Path) -> dict[str, str]:
        from targets.ncnn.snippet import snippets

        return snippets(contract, entry, model_dir)

    def run_on_device(self, run: DeviceRun) -> DeviceMeasurement:
        from targets.ncnn.device import run_benchncnn

        return run_benchncnn(run)

