"""ncnn's own benchmark binary, benchncnn, run on a device (validation/device_run.py pushes it), and the parser of
its output.

benchncnn prints `min / max / avg` of its loops: mean = avg, no percentile. It fills the weights with zeros
itself (only the .param is pushed) and enables fp16 storage and arithmetic wherever the CPU has them, whichever
precision the artifact was exported in; the row's method says so.
"""
from __future__ import annotations

import re
import shlex

from core.errors import ConverterError
from core.target import DeviceMeasurement, DeviceRun

BENCHNCNN_LOOPS = 50
_BENCHNCNN_LINE = re.compile(r"^\s*(\S.*?)\s+min\s*=\s*([\d.]+)\s+max\s*=\s*([\d.]+)\s+avg\s*=\s*([\d.]+)\s*$")


def parse_benchncnn(output: str) -> dict:
    """The `NAME  min = ..  max = ..  avg = ..` line benchncnn prints for the model (milliseconds)."""
    settings = dict(re.findall(r"^\s*(loop_count|num_threads|powersave|gpu_device|cooling_down)\s*=\s*(-?\d+)",
                               output, flags=re.MULTILINE))
    results = [match for match in map(_BENCHNCNN_LINE.match, output.splitlines()) if match]
    if not results:
        raise ConverterError("benchncnn printed no timing line",
                             hint="its output is above; this needs a benchncnn that takes param=... shape=[...]")
    _, low, high, avg = results[-1].groups()
    return {"min_ms": float(low), "max_ms": float(high), "mean_ms": float(avg),
            "runs": int(settings["loop_count"]) if "loop_count" in settings else None,
            "tool_settings": {key: int(value) for key, value in settings.items()}}


def run_benchncnn(run: DeviceRun) -> DeviceMeasurement:
    _, channels, height, width = run.input_shape
    # loops, threads, powersave 0 (all cores), gpu -1 (CPU), cooling down 0; then the model and its w,h,c shape.
    argv = [run.tool, str(BENCHNCNN_LOOPS), str(run.threads), "0", "-1", "0", f"param={run.model}",
            f"shape=[{width},{height},{channels}]"]
    figures = parse_benchncnn(run.shell(f"cd {shlex.quote(run.folder)} && " + " ".join(shlex.quote(arg) for arg in argv)))
    method = (f"measured on {run.device} with benchncnn, CPU, {run.threads} thread(s), {BENCHNCNN_LOOPS} loops "
              "after its warm-up; FPS from the mean; benchncnn uses fp16 arithmetic where the CPU has it, whatever "
              "the artifact's storage precision")
    details = {"tool": "benchncnn", "command": " ".join(argv), "device": run.device, "threads": run.threads,
               "runs": figures["runs"], "min_ms": figures["min_ms"], "max_ms": figures["max_ms"],
               "tool_settings": figures["tool_settings"]}
    return DeviceMeasurement(run.artifact_path, None, figures["mean_ms"], method, details)
