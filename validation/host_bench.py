"""Host measurement: each artifact timed in its own runtime on this machine, in a fresh child process.

Why a child per artifact: the runtimes are native code, so Python's tracemalloc sees none of their memory;
the process's peak resident set (getrusage ru_maxrss) does, but it is a high-water mark that never comes
down, so two artifacts measured in one process would share one peak. A child per artifact also keeps
thread pools and delegates of one runtime from warming or slowing the next.

What is timed is one `Runner.run` call on a 1-sample batch of the input contract's shape: the same call an app
makes per frame, including the input copy (and the NCHW -> NHWC transpose for TFLite), not the camera or
the pre-processing.

Stopping rule (StoppingRule): warm up for at least `warmup_runs` runs and `warmup_seconds`; then time runs.
From `min_runs` on, every `check_every` runs the p50 and p90 are compared with the previous check; when both
moved by at most `stable_within` (relative), they are stable and timing stops. Otherwise timing stops at
`max_runs` or after `budget_seconds`, and the measurement says it was not stable. p99 is reported from the
same runs; it is only meaningful with ~100 runs or more, which `min_runs` guarantees unless the budget
ran out first (a very slow model): `runs` is always recorded.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.artifact import Artifact, every_output_call
from core.errors import ConverterError, MobileExportError
from core.process import python_path_for_child
from targets import REGISTRY, get_target

PROGRESS_AFTER_S = 2.0  # runs shorter than this show no progress line
PERCENTILES = (50, 90, 99)


@dataclass(frozen=True)
class StoppingRule:
    warmup_runs: int = 5
    warmup_seconds: float = 1.0
    min_runs: int = 100
    max_runs: int = 2000
    check_every: int = 50
    stable_within: float = 0.03
    budget_seconds: float = 20.0


@dataclass(frozen=True)
class MeasureRequest:
    """One artifact to time; everything the child needs, as plain data."""

    runtime: str
    precision: str
    files: tuple[str, ...]  # absolute paths: the model file first, then companions (ncnn's .bin)
    input_shape: tuple[int, ...]  # the contract's NCHW shape
    details: dict = field(default_factory=dict)  # the artifact's manifest details (names of its tensors, ...)
    threads: int = 1
    rule: StoppingRule = field(default_factory=StoppingRule)

    def artifact(self) -> Artifact:
        files = [Path(f) for f in self.files]
        return Artifact(files[0], self.runtime, self.precision, tuple(files[1:]), self.details)


@dataclass(frozen=True)
class HostMeasurement:
    runtime: str
    precision: str
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    runs: int
    warmup_runs: int
    timed_seconds: float
    stable: bool
    threads: int
    peak_rss_mb: float  # the whole child process: Python, numpy, the runtime library, the model
    baseline_rss_mb: float  # the same child after importing the runtime, before loading the model
    settings: dict  # runtime options as the runtime reports them

    @property
    def model_peak_mb(self) -> float:
        """What loading and running this artifact added to the process's peak."""
        return self.peak_rss_mb - self.baseline_rss_mb

    @property
    def fps(self) -> float:
        return 1000.0 / self.p50_ms

    def as_dict(self) -> dict:
        return {**asdict(self), "model_peak_mb": round(self.model_peak_mb, 1)}


def default_threads() -> int:
    """All cores this process may use, at most 4 (the big-core count of most phones)."""
    return max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def host_info() -> dict:
    """What the host figures depend on; printed with the table and stored in bench.json."""
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    versions = {}
    for target in REGISTRY.values():
        version = _version_or_why_not(target)
        if version is not None:
            versions[target.runtime_package or target.name] = version
    return {
        "machine": platform.machine(),
        "cpu": _cpu_model() or platform.processor() or "unknown",
        "logical_cores": cores,
        "load_average_1min": None if load is None else round(load, 2),
        "busy": load is not None and load > cores,
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "runtimes": versions,
    }


def _version_or_why_not(target) -> str | None:
    try:
        return target.runtime_version()
    except MobileExportError as error:  # a runtime in a virtualenv of its own that is not installed
        return f"not installed ({error.message})"


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def measure_on_host(request: MeasureRequest, log_path: Path) -> HostMeasurement:
    """Time one artifact in a fresh child process. Runtime chatter goes to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mobile-export-bench-") as scratch:
        request_path, result_path = Path(scratch) / "request.json", Path(scratch) / "result.json"
        request_path.write_text(json.dumps({**asdict(request), "log": str(log_path), "result": str(result_path)}))
        env = {**os.environ, "PYTHONPATH": python_path_for_child(),
               "TF_CPP_MIN_LOG_LEVEL": "2"}
        python = get_target(request.runtime).host_python()  # ExecuTorch times under its own interpreter
        completed = subprocess.run([python, "-m", "validation.host_bench", str(request_path)],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    if completed.returncode != 0 or "error" in result or not result:
        problem = result.get("error", f"the measuring process exited with code {completed.returncode}")
        raise ConverterError(f"{request.runtime} {request.precision} could not be timed on this host: {problem}",
                             hint=f"the runtime's own output is in {log_path}")
    return HostMeasurement(**result)


# ---- the child process ----------------------------------------------------------------------------------


def _child_main(request_path: Path) -> None:
    from core.capture import output_to

    raw = json.loads(request_path.read_text())
    result_path, log_path = Path(raw.pop("result")), Path(raw.pop("log"))
    request = MeasureRequest(**{**raw, "rule": StoppingRule(**raw["rule"]), "files": tuple(raw["files"]),
                                "input_shape": tuple(raw["input_shape"])})
    progress = _ProgressLine(f"{request.runtime} {request.precision}", os.fdopen(os.dup(2), "w"))
    try:
        with output_to(log_path):
            measurement = _measure_here(request, progress)
        result = measurement.as_dict()
        result.pop("model_peak_mb")
    except Exception as error:  # reported to the parent, which raises it as a typed error
        result = {"error": f"{type(error).__name__}: {getattr(error, 'message', error)}"}
    finally:
        progress.close()
    result_path.write_text(json.dumps(result))


def _measure_here(request: MeasureRequest, progress: "_ProgressLine") -> HostMeasurement:
    target = get_target(request.runtime)
    if target.runtime_module:  # loaded before the baseline reading, so the model's share of memory stands apart
        __import__(target.runtime_module)
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    runner, settings = target.timing_runner(request.artifact(), request.threads)
    sample = np.random.default_rng(0).standard_normal(request.input_shape).astype(np.float32)
    run_frame = every_output_call(runner)
    timings, warmup_runs, stable, seconds = time_runs(lambda: run_frame(sample), request.rule, progress)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    p50, p90, p99 = (float(v) for v in np.percentile(timings, PERCENTILES))
    return HostMeasurement(
        runtime=request.runtime, precision=request.precision,
        p50_ms=p50, p90_ms=p90, p99_ms=p99, mean_ms=float(np.mean(timings)),
        min_ms=float(np.min(timings)), max_ms=float(np.max(timings)),
        runs=len(timings), warmup_runs=warmup_runs, timed_seconds=seconds, stable=stable, threads=request.threads,
        peak_rss_mb=peak_kb / 1024.0, baseline_rss_mb=baseline_kb / 1024.0, settings=settings,
    )


def time_runs(run_once, rule: StoppingRule, progress: "_ProgressLine | None" = None) -> tuple[list[float], int, bool, float]:
    """Warm up, then time `run_once` by the stopping rule. Returns (milliseconds per run, warm-up runs,
    whether p50/p90 settled, seconds spent timing)."""
    clock = time.perf_counter
    started = clock()
    warmup_runs = 0
    while warmup_runs < rule.warmup_runs or clock() - started < rule.warmup_seconds:
        run_once()
        warmup_runs += 1
        if clock() - started > rule.budget_seconds:
            break
    timings: list[float] = []
    previous: np.ndarray | None = None
    stable = False
    timing_started = clock()
    while True:
        begin = clock()
        run_once()
        end = clock()
        timings.append((end - begin) * 1000.0)
        elapsed = end - timing_started
        if progress is not None:
            progress.update(len(timings), elapsed, rule.budget_seconds)
        if len(timings) >= rule.min_runs and (len(timings) - rule.min_runs) % rule.check_every == 0:
            current = np.percentile(timings, (50, 90))
            if previous is not None and np.all(np.abs(current - previous) <= rule.stable_within * previous):
                stable = True
                break
            previous = current
        if len(timings) >= rule.max_runs or elapsed >= rule.budget_seconds:
            break
    return timings, warmup_runs, stable, clock() - timing_started


class _ProgressLine:
    """A one-line progress display on the terminal for timings that take more than a moment."""

    def __init__(self, label: str, stream):
        self._label, self._stream = label, stream
        self._shown_at = 0.0
        self._visible = False
        self._enabled = stream.isatty()

    def update(self, runs: int, elapsed: float, budget: float) -> None:
        if not self._enabled or elapsed < PROGRESS_AFTER_S or elapsed - self._shown_at < 0.25:
            return
        self._shown_at = elapsed
        filled = int(20 * min(1.0, elapsed / budget))
        self._stream.write(f"\r  {self._label}: [{'#' * filled}{'.' * (20 - filled)}] {runs} runs, "
                           f"{elapsed:.0f}/{budget:.0f} s")
        self._stream.flush()
        self._visible = True

    def close(self) -> None:
        if self._visible:
            self._stream.write("\r" + " " * 72 + "\r")
        self._stream.close()


if __name__ == "__main__":
    _child_main(Path(sys.argv[1]))
