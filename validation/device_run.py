"""On a real device: push the artifacts over adb and run the runtime's own benchmark binary on them.

The user brings the binaries (they are built per ABI and per runtime release): LiteRT's `benchmark_model`
for .tflite artifacts and ncnn's `benchncnn` for .ncnn.param artifacts, each given by --benchmark-binary.
Which runtime a binary serves is read from its file name.

What each binary reports, and so what a row holds:
- benchmark_model prints the statistics of its timed runs (`count=.. min=.. max=.. avg=.. [median=..]`);
  the median is printed by recent releases only. p50 = that median when printed; mean = avg.
- benchncnn prints `min / max / avg` of its loops: mean = avg, no percentile. It fills the weights with
  zeros itself (only the .param is pushed) and enables fp16 storage and arithmetic wherever the CPU has them,
  whichever precision the artifact was exported in; the row's method says so.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from core.errors import ConverterError, InputError

DEVICE_DIR = "/data/local/tmp/mobile-export"
ADB_TIMEOUT_S = 600
BENCHNCNN_LOOPS = 50
BENCHMARK_MODEL_RUNS = 100
BENCHMARK_MODEL_WARMUP = 10
ADB_HINT = ("install Android platform-tools (the package is usually called android-tools-adb or "
            "android-sdk-platform-tools), put adb on PATH, plug the device in with USB debugging enabled "
            "and accept the prompt on its screen; `adb devices` must list it as 'device'")


@dataclass(frozen=True)
class BenchmarkBinary:
    path: Path
    runtime: str  # "tflite" | "ncnn"
    tool: str  # "benchmark_model" | "benchncnn"


@dataclass(frozen=True)
class DeviceMeasurement:
    artifact: str  # the manifest path of the artifact
    p50_ms: float | None
    mean_ms: float
    method: str
    details: dict = field(default_factory=dict)


def parse_device_spec(spec: str) -> str:
    """`adb:SERIAL` -> SERIAL."""
    kind, _, serial = spec.partition(":")
    if kind != "adb" or not serial.strip():
        raise InputError(f"--device {spec!r} is not adb:SERIAL",
                         hint="pass the serial `adb devices` lists, e.g. --device adb:R58M123ABC")
    return serial.strip()


def classify_binary(path: Path) -> BenchmarkBinary:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"benchmark binary {path} does not exist",
                         hint="build or download LiteRT's benchmark_model / ncnn's benchncnn for the device's ABI")
    name = path.name.lower()
    if "benchncnn" in name:
        return BenchmarkBinary(path, "ncnn", "benchncnn")
    if "benchmark_model" in name:
        return BenchmarkBinary(path, "tflite", "benchmark_model")
    raise InputError(f"cannot tell which runtime {path.name} benchmarks",
                     hint="keep the tools' own names in the file name: ...benchmark_model... (LiteRT) or ...benchncnn... (ncnn)")


# ---- parsing the tools' output --------------------------------------------------------------------------

_STAT_LINE = re.compile(r"count=(\d+)\s.*?min=([\d.]+)\s+max=([\d.]+)\s+avg=([\d.eE+-]+)(?:.*?median=([\d.]+))?")
_BENCHNCNN_LINE = re.compile(r"^\s*(\S.*?)\s+min\s*=\s*([\d.]+)\s+max\s*=\s*([\d.]+)\s+avg\s*=\s*([\d.]+)\s*$")


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


# ---- adb --------------------------------------------------------------------------------------------------


class Adb:
    """argv-only adb calls for one device; every failure names the command."""

    def __init__(self, serial: str):
        executable = shutil.which("adb")
        if executable is None:
            raise InputError("adb is not on PATH, so no device can be reached (--device was given)", hint=ADB_HINT)
        self.executable, self.serial = executable, serial

    def check_connected(self) -> None:
        listing = self._run(["devices"], with_serial=False)
        states = dict(line.split()[:2] for line in listing.splitlines()[1:] if len(line.split()) >= 2)
        if states.get(self.serial) != "device":
            seen = ", ".join(f"{serial} ({state})" for serial, state in states.items()) or "no devices"
            raise InputError(f"adb device {self.serial} is not connected and ready; adb devices lists: {seen}",
                             hint=ADB_HINT)

    def push(self, local: Path, remote: str) -> None:
        self._run(["push", str(local), remote])

    def shell(self, *argv: str) -> str:
        return self._run(["shell", " ".join(shlex.quote(arg) for arg in argv)])

    def shell_script(self, script: str) -> str:
        return self._run(["shell", script])

    def _run(self, args: list[str], with_serial: bool = True) -> str:
        argv = [self.executable, *(["-s", self.serial] if with_serial else []), *args]
        try:
            completed = subprocess.run(argv, capture_output=True, text=True, timeout=ADB_TIMEOUT_S,
                                       stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise ConverterError(f"`adb {' '.join(args)}` did not finish in {ADB_TIMEOUT_S} s",
                                 hint="check the device (screen on, not throttled) and retry") from None
        output = completed.stdout + completed.stderr
        if completed.returncode != 0:
            tail = "\n".join("    " + line for line in output.strip().splitlines()[-15:])
            raise ConverterError(f"`adb {' '.join(args)}` failed (exit code {completed.returncode}):\n{tail}",
                                 hint="see the device's message above")
        return output


# ---- the run ----------------------------------------------------------------------------------------------


def run_on_device(serial: str, binaries: tuple[Path, ...], model, threads: int) -> list[DeviceMeasurement]:
    """Push each binary and the artifacts it can run, run it, parse it. `model` is fps_gate.ExportedModel."""
    tools = [classify_binary(path) for path in binaries]
    if not tools:
        raise InputError("--device needs the runtime's benchmark binary for the device",
                         hint="pass --benchmark-binary PATH to LiteRT's benchmark_model and/or ncnn's benchncnn")
    adb = Adb(serial)
    adb.check_connected()
    device_name = adb.shell("getprop", "ro.product.model").strip() or serial
    adb.shell("mkdir", "-p", DEVICE_DIR)
    measurements = []
    for tool in tools:
        artifacts = [a for a in model.artifacts if a.runtime == tool.runtime]
        if not artifacts:
            raise InputError(f"{tool.path.name} benchmarks {tool.runtime}, and this export has no {tool.runtime} artifact",
                             hint="export that target first (e.g. --target android)")
        remote_tool = f"{DEVICE_DIR}/{tool.tool}"
        adb.push(tool.path, remote_tool)
        adb.shell("chmod", "755", remote_tool)
        for artifact in artifacts:
            remote_model = f"{DEVICE_DIR}/{Path(artifact.path).name}"
            adb.push(model.folder / artifact.path, remote_model)  # benchncnn needs only the .param
            runner = _run_benchncnn if tool.tool == "benchncnn" else _run_benchmark_model
            measurements.append(runner(adb, remote_tool, remote_model, artifact, model, threads, device_name))
    return measurements


def _run_benchmark_model(adb: Adb, tool: str, remote_model: str, artifact, model, threads: int, device: str):
    argv = [tool, f"--graph={remote_model}", f"--num_threads={threads}", f"--warmup_runs={BENCHMARK_MODEL_WARMUP}",
            f"--num_runs={BENCHMARK_MODEL_RUNS}", "--use_xnnpack=true"]
    figures = parse_benchmark_model(adb.shell(*argv))
    basis = "median" if figures["p50_ms"] is not None else "mean (this benchmark_model prints no median)"
    method = (f"measured on {device} ({adb.serial}) with LiteRT benchmark_model, XNNPACK, {threads} thread(s), "
              f"{figures['runs']} runs; FPS from the {basis}")
    details = {"tool": "benchmark_model", "command": " ".join(argv), "device": device, "threads": threads,
               "runs": figures["runs"], "min_ms": figures["min_ms"], "max_ms": figures["max_ms"]}
    return DeviceMeasurement(artifact.path, figures["p50_ms"], figures["mean_ms"], method, details)


def _run_benchncnn(adb: Adb, tool: str, remote_model: str, artifact, model, threads: int, device: str):
    _, channels, height, width = model.input_shape
    # loops, threads, powersave 0 (all cores), gpu -1 (CPU), cooling down 0; then the model and its w,h,c shape.
    argv = [tool, str(BENCHNCNN_LOOPS), str(threads), "0", "-1", "0", f"param={remote_model}",
            f"shape=[{width},{height},{channels}]"]
    figures = parse_benchncnn(adb.shell_script(f"cd {shlex.quote(DEVICE_DIR)} && "
                                               + " ".join(shlex.quote(arg) for arg in argv)))
    method = (f"measured on {device} ({adb.serial}) with benchncnn, CPU, {threads} thread(s), {BENCHNCNN_LOOPS} loops "
              "after its warm-up; FPS from the mean; benchncnn uses fp16 arithmetic where the CPU has it, whatever "
              "the artifact's storage precision")
    details = {"tool": "benchncnn", "command": " ".join(argv), "device": device, "threads": threads,
               "runs": figures["runs"], "min_ms": figures["min_ms"], "max_ms": figures["max_ms"],
               "tool_settings": figures["tool_settings"]}
    return DeviceMeasurement(artifact.path, None, figures["mean_ms"], method, details)
