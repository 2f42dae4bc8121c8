"""LiteRT's own benchmark binary, benchmark_model, run on a device (validation/device_run.py pushes it).

It prints the statistics of its timed runs (`count=.. min=.. max=.. avg=.. [median=..]`); the median is
printed by recent releases only. p50 = that median when printed; mean = avg.
"""
from __future__ import annotations

import re
import shlex

from core.errors import ConverterError
from core.target import DeviceMeasurement, DeviceRun

BENCHMARK_MODEL_RUNS = 100
BENCHMARK_MODEL_WARMUP = 10
_STAT_LINE = re.compile(r"count=(\d+)\s.*?min=([\d.]+)\s+max=([\d.]+)\s+avg=([\d.eE+-]+)(?:.*?median=([\d.]+))?")


def parse_benchmark_model(output: str) -> dict:
    """The timed runs' statistics from benchmark_model's log: the last `count=...` line (the first is the
    warm-up). Microseconds in, milliseconds out."""
    stats = [match for match in map(_STAT_LINE.search, output.splitlines()) if match]
    if not stats:
        raise ConverterError("benchmark_model printed no timing statistics",
                             hint="its output is above; check that the model loaded and the flags were accepted")
    count, low, high, avg, median = stats[-1].groups()
    return {"runs": int(count), "min_ms": float(low) / 1000, "max_ms": float(high) / 1000,
            "mean_ms": float(avg) / 1000, "p50_ms": None if median is None else float(median) / 1000}


def run_benchmark_model(run: DeviceRun) -> DeviceMeasurement:
    argv = [run.tool, f"--graph={run.model}", f"--num_threads={run.threads}", f"--warmup_runs={BENCHMARK_MODEL_WARMUP}",
            f"--num_runs={BENCHMARK_MODEL_RUNS}", "--use_xnnpack=true"]
    figures = parse_benchmark_model(run.shell(" ".join(shlex.quote(arg) for arg in argv)))
    basis = "median" if figures["p50_ms"] is not None else "mean (this benchmark_model prints no median)"
    method = (f"measured on {run.device} with LiteRT benchmark_model, XNNPACK, {run.threads} thread(s), "
              f"{figures['runs']} runs; FPS from the {basis}")
    details = {"tool": "benchmark_model", "command": " ".join(argv), "device": run.device, "threads": run.threads,
               "runs": figures["runs"], "min_ms": figures["min_ms"], "max_ms": figures["max_ms"]}
    return DeviceMeasurement(run.artifact_path, figures["p50_ms"], figures["mean_ms"], method, details)
