"""One conformance test over the whole target registry: every runtime's artifacts of the digits model (and of
its three-output form) were converted by its target, and through the target's own interface they load, run
(every output, by name), pass parity, read back for explain, time on this host and write their integration
snippet.

A capability a runtime does not offer is listed in KNOWN_EXCEPTIONS with why; anything else must work. A new
runtime gets this test for free: registering it is enough to be checked.
"""
from __future__ import annotations

import numpy as np
import pytest

from core.manifest import read_manifest
from core.artifact import every_output_call, outputs_of
from core.parity import DEFAULT_THRESHOLDS, compare_outputs
from core.target import NotOnThisHost
from graph.explain_ops import WEIGHTED_KINDS
from targets import REGISTRY, interchange_target
from tests.helpers import digit_photos, preprocess

# (target, capability) -> why it is not offered. Each entry is a fact about the runtime, not a test gap.
KNOWN_EXCEPTIONS = {
    # The interchange ONNX model is what explain compares the other artifacts with, and no app loads it.
    ("onnx", "explain"): "it is the reference explain compares other artifacts with",
    ("onnx", "snippet"): "apps ship a runtime's own artifact; the ONNX model is the interchange",
    # Core ML prediction needs macOS; parity here runs the reference evaluator, which is no speed measure.
    ("coreml", "timing"): "Core ML runs only on macOS/iOS",
    # The program's layers run inside XNNPACK's compiled partitions, whose inner tensors ExecuTorch's runtime does
    # not hand out; explain the export's TFLite or ncnn artifact of the same model instead.
    ("executorch", "explain"): "a .pte's layers run inside opaque XNNPACK partitions",
}
SAMPLES = 20  # held-out digits; parity gates below are the export's own (core/parity.py DEFAULT_THRESHOLDS)


def _expects(target: str, capability: str) -> bool:
    return (target, capability) not in KNOWN_EXCEPTIONS


@pytest.fixture(scope="module")
def exports(digits_android_export, ios_export, several_outputs_export):
    """Every registered runtime's artifacts of the digits model (android and ios exports together), and of the
    digits model with three outputs (--target all)."""
    _, ios_dir = ios_export
    result, several_dir = several_outputs_export
    assert result.returncode == 0, result.stderr[-3000:]
    return [read_manifest(digits_android_export), read_manifest(ios_dir), read_manifest(several_dir)]


def _output_names(manifest) -> tuple[str, ...]:
    return tuple(output["name"] for output in manifest.raw.get("outputs") or [manifest.output])


@pytest.fixture(scope="module")
def samples():
    photos, _ = digit_photos()
    return preprocess(photos[-SAMPLES:])  # the digits model trained on the first 1500


def _entries(exports, name: str):
    return [(manifest, entry) for manifest in exports for entry in manifest.of_runtime(name)]


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_registered_target_converted_the_model_into_artifacts(exports, name):
    target = REGISTRY[name]
    entries = _entries(exports, name)
    assert entries, f"no {name} artifact in the android or ios export"
    for manifest, entry in entries:
        if target.platforms:  # the interchange model is recorded under the export's own platform
            assert entry.platform in target.platforms
        assert entry.reproducible == target.is_reproducible(entry.precision)
        assert all((manifest.folder / record.path).exists() for record in entry.files)
    assert target.tool_versions(), f"{name} names no tool versions for the manifest"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_artifact_loads_and_runs_within_its_parity_gate(exports, samples, name):
    target, reference_target = REGISTRY[name], interchange_target()
    for manifest, entry in _entries(exports, name):
        reference_entry = manifest.of_runtime(reference_target.name)[0]
        names = _output_names(manifest)
        reference = outputs_of(reference_target.load(reference_entry.artifact(manifest.folder)), samples, names)
        outputs = outputs_of(target.load(entry.artifact(manifest.folder)), samples, names)
        assert list(outputs) == list(names), f"{entry.name} gives its outputs as {list(outputs)}"
        outputs = {name: values.reshape(reference[name].shape) for name, values in outputs.items()}
        parity = compare_outputs(reference, outputs, DEFAULT_THRESHOLDS[entry.precision])
        assert parity.passed, f"{entry.name}: {parity.failures}"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_explainable_artifact_reads_back_its_layers_and_inner_tensors(exports, samples, name):
    target = REGISTRY[name]
    assert target.explainable == _expects(name, "explain")
    for manifest, entry in _entries(exports, name):
        graph = target.explain_graph(entry.artifact(manifest.folder))
        if not target.explainable:
            assert graph is None
            continue
        weighted = [op for op in graph.ops if op.kind in WEIGHTED_KINDS]
        assert weighted, f"{entry.name}: no convolution or dense layer read back"
        batch = manifest.input_shape[0]
        values = graph.run(samples[:batch], [weighted[0].outputs[0], weighted[-1].outputs[0]])
        assert all(np.isfinite(v).all() and v.shape[0] == batch for v in values.values())


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_shipping_target_writes_a_snippet_that_loads_its_artifact(exports, name):
    target = REGISTRY[name]
    for manifest, entry in _entries(exports, name):
        raw = next(a for a in manifest.raw["artifacts"] if a["path"] == entry.path)
        written = target.snippets(manifest.snippet_contract(), raw, manifest.folder)
        if not _expects(name, "snippet"):
            assert written == {}
            continue
        assert written, f"{name} writes no snippet"
        assert all(entry.name in text for text in written.values()), "the snippet does not load the artifact"


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_runtime_times_on_this_host_or_says_why_not(exports, samples, name):
    target = REGISTRY[name]
    manifest, entry = _entries(exports, name)[0]
    if not _expects(name, "timing"):
        assert target.why_not_timed_here()
        with pytest.raises(NotOnThisHost):
            target.timing_runner(entry.artifact(manifest.folder), threads=1)
        return
    assert target.why_not_timed_here() is None
    for manifest, entry in _entries(exports, name):  # models with one output and with several
        runner, settings = target.timing_runner(entry.artifact(manifest.folder), threads=1)
        assert settings
        result = every_output_call(runner)(samples[: manifest.input_shape[0]])
        values = result.values() if isinstance(result, dict) else [result]
        assert all(np.isfinite(value).all() for value in values)


def test_the_exception_table_names_only_registered_targets():
    assert {name for name, _ in KNOWN_EXCEPTIONS} <= set(REGISTRY)
