"""What a runtime offers the rest of mobile-export: the interface every folder under targets/ implements.

A target converts the checked ONNX model into artifacts and loads them as Runners; that much every target
must do. Everything else the pipeline, bundle, report, bench and explain need from a runtime is asked here,
never decided by switching on a runtime's name elsewhere. Each optional capability has a default that says
"this runtime does not offer it", so a new runtime starts with `convert` and `load` and grows from there.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from core.artifact import Artifact, ConversionJob, OnnxModel, Runner


class NotOnThisHost(Exception):
    """The runtime cannot run on this machine (Core ML off macOS); the message says why."""


@dataclass(frozen=True)
class SnippetContract:
    """The input contract as an app's integration code needs it (from the manifest)."""

    input_name: str
    channels: int
    height: int
    width: int
    color: str  # rgb | bgr
    pixel_scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def channel_order(self) -> tuple[str, ...]:
        """Which pixel component feeds each input channel, in order."""
        if self.channels == 1:
            return ("gray",)
        return ("r", "g", "b") if self.color == "rgb" else ("b", "g", "r")


@dataclass(frozen=True)
class DeviceMeasurement:
    """One artifact timed by its runtime's own benchmark binary on a device."""

    artifact: str  # the manifest path of the artifact
    p50_ms: float | None
    mean_ms: float
    method: str
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceRun:
    """What a device benchmark needs: a shell on the device and where things were put there."""

    shell: Callable[[str], str]  # runs one shell command line on the device, returns its output
    tool: str  # the benchmark binary's path on the device
    folder: str  # the device folder the tool and models were pushed to
    model: str  # the artifact's main file on the device
    artifact_path: str  # the artifact's path in the manifest
    input_shape: tuple[int, ...]  # NCHW
    threads: int
    device: str  # a human name for the device ("Pixel 8 (R58M...)")


class Target:
    name: str = ""  # what --target and the manifest call this runtime
    display_name: str = ""  # for people: "LiteRT (TFLite)"
    platforms: tuple[str, ...] = ()  # where its artifacts ship; () for the ONNX interchange every export holds
    in_platform_groups: bool = True  # built by --target <platform>; False: only by its own name and by "all"
    profile_runtime: str = ""  # what device profiles call its runtime library
    interchange: bool = False  # the model every other target converts from (one target only)
    # Precisions measured to come out byte-identical when the same inputs are exported again (tests check it).
    reproducible_precisions: frozenset[str] = frozenset()
    layout_ops: tuple[str, ...] = ()  # op kinds that only move data between layouts (TFLite's TRANSPOSE)
    pad_ops: tuple[str, ...] = ()  # op kinds that pad explicitly
    benchmark_binary: str | None = None  # the name of the runtime's own device benchmark tool
    explainable: bool = False  # explain_graph reads its artifacts
    # Its artifacts carry the class names (job.labels): an artifact kept from an earlier export must have been
    # made with the labels this export ships in labels.txt.
    embeds_labels: bool = False

    @property
    def runtime(self) -> str:
        return self.name

    def convert(self, job: ConversionJob) -> list[Artifact]:
        """Write artifacts into job.workdir; raise ConverterError with the log's summary on failure."""
        raise NotImplementedError

    def load(self, artifact: Artifact) -> Runner:
        raise NotImplementedError

    def interchange_artifact(self, onnx_model: OnnxModel) -> Artifact:
        """The interchange target only: the artifact record of an ONNX file."""
        raise NotImplementedError(f"{self.name} is not the interchange target")

    def tool_versions(self) -> dict[str, str]:
        return {}

    def is_reproducible(self, precision: str) -> bool:
        return precision in self.reproducible_precisions

    # ---- timing on this host ----------------------------------------------------------------------------

    runtime_package: str | None = None  # the installed package whose version host figures depend on
    runtime_module: str | None = None  # imported before the memory baseline, so the model's share stands apart

    def runtime_version(self) -> str | None:
        """The version of the runtime host figures depend on; None when it has no host runtime."""
        if not self.runtime_package:
            return None
        try:
            return metadata.version(self.runtime_package)
        except metadata.PackageNotFoundError:
            return "not installed"

    def host_python(self) -> str:
        """The interpreter a host timing of this runtime runs under (validation/host_bench.py's child)."""
        return sys.executable

    def timing_runner(self, artifact: Artifact, threads: int) -> tuple[Runner, dict]:
        """A runner with `threads` threads for timing one artifact, and the options it runs with."""
        raise NotOnThisHost(self.why_not_timed_here() or f"no host runtime for {self.name}")

    def why_not_timed_here(self) -> str | None:
        """None when timing_runner works on this machine, else why it does not."""
        overridden = type(self).timing_runner is not Target.timing_runner
        return None if overridden else f"no host runtime for {self.name}"

    # ---- explain, bundle, device --------------------------------------------------------------------------

    def explain_graph(self, artifact: Artifact):
        """A reader of the artifact's ops that runs it keeping every inner tensor (graph.explain_ops), or None
        when this runtime's artifacts cannot be explained."""
        return None

    def snippets(self, contract: SnippetContract, entry: dict, model_dir: Path) -> dict[str, str]:
        """{path in bundle.zip: source text} of integration code loading the manifest artifact `entry`."""
        return {}

    def run_on_device(self, run: DeviceRun) -> DeviceMeasurement:
        raise NotOnThisHost(f"{self.name} has no device benchmark")


def float_literals(values) -> str:
    """Numbers as C/Kotlin/Swift float literals: "0.485f, 0.456f"."""
    return ", ".join(f"{value:.7g}f" for value in values)
