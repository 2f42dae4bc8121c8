"""On a real device: push the artifacts over adb and run the runtime's own benchmark binary on them.

The user brings the binaries (they are built per ABI and per runtime release), each given by
--benchmark-binary; which runtime a binary serves is read from its file name, which keeps the tool's own name
(Target.benchmark_binary). How each tool is run and what its output holds is its target's business
(targets/<runtime>/device.py); this module owns the adb side: the device, pushing, the shell.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConverterError, InputError
from core.target import DeviceMeasurement, DeviceRun
from targets import REGISTRY, get_target

DEVICE_DIR = "/data/local/tmp/mobile-export"
ADB_TIMEOUT_S = 600
ADB_HINT = ("install Android platform-tools (the package is usually called android-tools-adb or "
            "android-sdk-platform-tools), put adb on PATH, plug the device in with USB debugging enabled "
            "and accept the prompt on its screen; `adb devices` must list it as 'device'")


@dataclass(frozen=True)
class BenchmarkBinary:
    path: Path
    runtime: str  # the target whose artifacts it benchmarks
    tool: str  # the tool's own name, as the target states it (Target.benchmark_binary)




def parse_device_spec(spec: str) -> str:
    """`adb:SERIAL` -> SERIAL."""
    kind, _, serial = spec.partition(":")
    if kind != "adb" or not serial.strip():
        raise InputError(f"--device {spec!r} is not adb:SERIAL",
                         hint="pass the serial `adb devices` lists, e.g. --device adb:R58M123ABC")
    return serial.strip()


def classify_binary(path: Path) -> BenchmarkBinary:
    path = Path(path)
    tools = {target.benchmark_binary: target.name for target in REGISTRY.values() if target.benchmark_binary}
    if not path.is_file():
        raise InputError(f"benchmark binary {path} does not exist",
                         hint=f"build or download {' / '.join(tools)} for the device's ABI")
    name = path.name.lower()
    for tool, runtime in tools.items():
        if tool.lower() in name:
            return BenchmarkBinary(path, runtime, tool)
    raise InputError(f"cannot tell which runtime {path.name} benchmarks",
                     hint="keep the tool's own name in the file name: " + ", ".join(
                         f"...{tool}... ({runtime})" for tool, runtime in tools.items()))


# ---- parsing the tools' output --------------------------------------------------------------------------







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
            adb.push(model.folder / artifact.path, remote_model)  # the main file is all a benchmark reads
            run = DeviceRun(shell=adb.shell_script, tool=remote_tool, folder=DEVICE_DIR, model=remote_model,
                            artifact_path=artifact.path, input_shape=model.input_shape, threads=threads,
                            device=f"{device_name} ({serial})")
            measurements.append(get_target(tool.runtime).run_on_device(run))
    return measurements




