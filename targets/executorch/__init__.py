"""ExecuTorch for Android and iOS: .pte programs lowered to the XNNPACK delegate, fp32 and int8 (PT2E,
calibrated on the export's photos with the activation-range rule the other int8 artifacts share).

ExecuTorch needs numpy 2 and the TFLite path pins numpy 1.26, so it lives in .venv-executorch
(environment.py): convert.py exports the program with torch.export here and lower.py lowers it there;
runner.py runs programs in-process under that interpreter (host timing) or through worker.py (parity);
snippet.py writes the Kotlin and Swift the bundle carries.
"""
from __future__ import annotations

from pathlib import Path

from core.artifact import VALIDATION_THREADS, Artifact, ConversionJob
from core.target import SnippetContract, Target


class ExecuTorchTarget(Target):
    name = "executorch"
    display_name = "ExecuTorch (XNNPACK)"
    platforms = ("android", "ios")
    # The android and ios groups build the formats their app teams already ship (LiteRT, ncnn, Core ML); a .pte
    # is asked for by name (--target executorch) or with --target all.
    in_platform_groups = False
    # Measured 2026-12-06 on the default MobileNetV2: the same .pte bytes (fp32 9e73ba3a7df22db1, int8 44c0adf580ca22dd)
    # with 1, 2 and 4 threads, MKL on its AVX2 path at 4; and MobileNetV3-Small (histogram ranges) at 1 and 2 threads
    reproducible_precisions = frozenset({"fp32", "int8"})
    profile_runtime = "executorch"
    runtime_module = "executorch.runtime"

    def convert(self, job: ConversionJob) -> list[Artifact]:
        from targets.executorch.convert import convert

        return convert(job, self.runtime)

    def load(self, artifact: Artifact):
        return _runner(artifact)

    def tool_versions(self) -> dict[str, str]:
        from targets.executorch.environment import installed_versions

        return installed_versions()

    def runtime_version(self) -> str:
        from targets.executorch.environment import installed_versions

        return installed_versions()["executorch"]

    def host_python(self) -> str:
        from targets.executorch.environment import host_python

        return host_python()

    def timing_runner(self, artifact: Artifact, threads: int):
        runner = _runner(artifact, threads)
        # in_process False: the timings include handing each input to the worker process (bench runs in-process)
        return runner, {"xnnpack_threads": threads, "in_process": runner.in_process}

    def snippets(self, contract: SnippetContract, entry: dict, model_dir: Path) -> dict[str, str]:
        from targets.executorch.snippet import snippets

        return snippets(contract, entry, model_dir)


def _runner(artifact: Artifact, threads: int = VALIDATION_THREADS):
    """The artifact's program run by ExecuTorch, its outputs named as the export recorded them."""
    from targets.executorch.runner import runner_for

    return runner_for(artifact.path, tuple(artifact.details.get("outputs") or ("output",)),
                      artifact.details["input_shape"][0], threads)
