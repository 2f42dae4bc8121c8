"""Core ML for iOS: ML Program `.mlpackage`s made by coremltools from the traced PyTorch module.

convert.py converts; preprocessing.py puts the input contract into the package's image input; runner.py runs
a package, with the Core ML runtime on macOS and the reference evaluator (mil_reference.py, the saved program
executed op by op) everywhere else; explain.py and snippet.py are what explain and the bundle need.
"""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

from core.artifact import Artifact, ConversionJob
from core.target import SnippetContract, Target


class CoreMLTarget(Target):
    name = "coreml"
    display_name = "Core ML"
    platforms = ("ios",)
    profile_runtime = "coreml"
    # Measured on 2026-11-23: coremltools writes fresh random UUIDs into each package's Manifest.json, so no
    # precision comes out byte-identical (the model spec and weights are).
    reproducible_precisions = frozenset()
    embeds_labels = True  # a classifier package keys its scores by the labels

    def convert(self, job: ConversionJob) -> list[Artifact]:
        from targets.coreml.convert import convert

        return convert(job, self.runtime)

    def load(self, artifact: Artifact):
        from targets.coreml.preprocessing import OUTPUT_NAME, preprocessing_of
        from targets.coreml.runner import CoreMLRunner

        return CoreMLRunner(artifact.path, preprocessing_of(artifact), artifact.details.get("output_name", OUTPUT_NAME),
                            outputs=artifact.details.get("outputs"))

    def tool_versions(self) -> dict[str, str]:
        return {"coremltools": metadata.version("coremltools")}

    def why_not_timed_here(self) -> str | None:
        return "Core ML runs only on macOS/iOS (parity used the reference evaluator, which is no speed measure)"

    explainable = True

    def explain_graph(self, artifact: Artifact):
        from targets.coreml.explain import CoreMLGraph
        from targets.coreml.preprocessing import preprocessing_of

        return CoreMLGraph(artifact.path, preprocessing_of(artifact))

    def snippets(self, contract: SnippetContract, entry: dict, model_dir: Path) -> dict[str, str]:
        from targets.coreml.snippet import snippets

        return snippets(contract, entry, model_dir)
