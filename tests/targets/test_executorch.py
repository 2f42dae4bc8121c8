"""ExecuTorch (targets/executorch/): what the conformance test over the registry does not already check.

The conformance test converts, runs, times and snippets the digits model's .pte programs (its --target all
export); here: the int8 program's record, the hand-off to the worker process, and what a user without
ExecuTorch's virtualenv is told.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

from core.errors import ConverterError
from core.manifest import read_manifest
from targets.executorch.environment import PYTHON_VARIABLE, executorch_python
from targets.executorch.runner import receive_array, send_array


def test_arrays_cross_to_the_worker_and_back_unchanged():
    stream = io.BytesIO()
    sent = [np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32), np.arange(5, dtype=np.int64)]
    for array in sent:
        send_array(stream, array)
    stream.seek(0)
    for array in sent:
        received = receive_array(stream)
        assert received.dtype == array.dtype and np.array_equal(received, array)


def test_without_executorchs_virtualenv_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setenv(PYTHON_VARIABLE, str(tmp_path / "no-such-python"))
    with pytest.raises(ConverterError) as raised:
        executorch_python()
    assert "make venv" in raised.value.hint


def test_the_int8_program_records_its_calibration_and_what_it_kept_float(several_outputs_export):
    result, folder = several_outputs_export
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = read_manifest(folder)
    (int8,) = [entry for entry in manifest.of_runtime("executorch") if entry.precision == "int8"]
    raw = next(a for a in manifest.raw["artifacts"] if a["path"] == int8.path)
    quantization = raw["details"]["quantization"]
    assert quantization["calibration_samples"] == manifest.raw["data"]["calibration_samples"]
    assert quantization["calibrated_tensors"] > 0
    ranges = quantization["activation_ranges"]
    assert set(ranges["chosen_by"]["cross_fitted_cosine"]) == {"histogram", "percentile"}
    assert ranges["method"] in ranges["chosen_by"]["cross_fitted_cosine"]
    # scores are written by the head's linear layer, features and detections by the last convolution; the box
    # and score fields of detections are assembled after it (a concatenation), in float
    assert len(quantization["answer_ops"]["ops"]) == 2
    assert any(name.startswith("cat") for name in quantization["float_after_answers"])
    assert raw["details"]["xnnpack_partitions"] >= 1


def test_the_host_benchmark_times_programs_inside_executorchs_interpreter(several_outputs_export):
    """`mobile-export bench` times a .pte in a child under .venv-executorch, the runtime in-process: no hand-off to a
    worker inside the timed loop, and the memory figures are the runtime's own process."""
    from validation.fps_gate import load_export, measure_artifact_on_host
    from validation.host_bench import StoppingRule

    _, folder = several_outputs_export
    model = load_export(folder, ("executorch",))
    artifact = next(a for a in model.artifacts if a.precision == "int8")
    rule = StoppingRule(warmup_runs=2, warmup_seconds=0.0, min_runs=10, max_runs=20, budget_seconds=5.0)
    measurement = measure_artifact_on_host(model, artifact, threads=1, rule=rule)
    assert measurement.settings == {"xnnpack_threads": 1, "in_process": True}
    assert 10 <= measurement.runs <= 20 and measurement.p50_ms > 0
