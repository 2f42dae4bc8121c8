"""Run a noisy third-party converter in a child process: private cwd, timeout, output to a log.

The child leads a process group of its own, so a timeout or a Ctrl-C stops it and everything it started, and
on Linux it is killed when we are, so no orphan goes on writing into a staging folder after a `kill -9`.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from core.errors import ConverterError, disk_full_error

LOG_TAIL_LINES = 15
NO_SPACE_MESSAGE = "No space left on device"
# Python converters iterate sets of strings, whose order changes with every interpreter start and leaks into
# the files they write (e.g. TFLite's conversion metadata); a fixed hash seed makes reruns byte-identical.
DETERMINISTIC_ENV = {"PYTHONHASHSEED": "0"}


def run_converter(
    args: list[str], *, cwd: Path, log_path: Path, timeout_s: float, what: str, env: dict | None = None
) -> None:
    """Run `args` (argv list, no shell) in `cwd`, appending its output to `log_path`.

    Raises ConverterError naming `what`, with the last lines of its output, if it fails, crashes or times out;
    InputError if it ran out of disk space.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"\n$ {' '.join(args)}\n")
        log.flush()
        returncode = run_contained(args, cwd=cwd, output=log, timeout_s=timeout_s, env=_child_env(env))
    _raise_if_failed(returncode, what, cwd, log_path, log_path, timeout_s)


@dataclass(frozen=True)
class ConverterCall:
    """One converter run of several side by side: its argv, its own working folder (its log goes there)."""

    args: list[str]
    cwd: Path
    what: str

    @property
    def private_log(self) -> Path:
        return self.cwd / "converter.log"


def run_converters_side_by_side(calls: list[ConverterCall], *, log_path: Path, timeout_s: float,
                                env: dict | None = None) -> None:
    """Run independent converter calls at once (on two cores, two pnnx runs take the time of one), all in this
    thread so a timeout or Ctrl-C stops every one of them as run_contained does. Each writes a private log; the
    logs are appended to `log_path` in the calls' order, then the first call that failed raises as
    run_converter would."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    logs = [open(call.private_log, "w", encoding="utf-8", errors="replace") for call in calls]
    processes, returncodes = [], []
    try:
        for call, log in zip(calls, logs):
            log.write(f"\n$ {' '.join(call.args)}\n")
            log.flush()
            processes.append(spawn_child(call.args, call.cwd, log, _child_env(env)))
        deadline = time.monotonic() + timeout_s
        for process in processes:
            try:
                returncodes.append(process.wait(timeout=max(0.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                returncodes.append(None)
    finally:
        for process in processes:
            _kill_group(process)
        for log in logs:
            log.close()
        with open(log_path, "a", encoding="utf-8", errors="replace") as combined:
            for call in calls:
                if call.private_log.exists():
                    combined.write(call.private_log.read_text(encoding="utf-8", errors="replace"))
    for call, returncode in zip(calls, returncodes):
        _raise_if_failed(returncode, call.what, call.cwd, call.private_log, log_path, timeout_s)


def _child_env(env: dict | None) -> dict:
    return {**os.environ, **DETERMINISTIC_ENV, **(env or {})}


def _raise_if_failed(returncode: int | None, what: str, cwd: Path, own_log: Path, log_path: Path,
                     timeout_s: float) -> None:
    """`own_log`: the call's output alone (its tail goes in the message); `log_path`: where the user finds it."""
    if returncode is None:
        raise ConverterError(
            f"{what} did not finish within {timeout_s:.0f} s and was stopped",
            hint=f"see {log_path}; raise the timeout with --timeout if the model is large",
        )
    if returncode != 0:
        tail = log_tail(own_log)
        if NO_SPACE_MESSAGE in tail:
            raise disk_full_error(cwd)
        raise ConverterError(f"{what} {how_it_ended(returncode)}:\n{tail}", hint=f"the full converter output is in {log_path}")


def child_result(path: Path) -> dict:
    """What a converter child reported in its JSON file; {} when it wrote none (the artifact checks that follow
    say what is missing)."""
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run_python_module(module: str, module_args: list[str], **kwargs) -> None:
    run_converter([sys.executable, "-m", module, *module_args], **kwargs)


def installed_executable(name: str) -> str:
    """A command-line tool installed next to this Python (wheels ship their binaries as console scripts),
    else on PATH."""
    beside_python = Path(sys.executable).with_name(name)
    found = str(beside_python) if beside_python.is_file() else shutil.which(name)
    if not found:
        raise ConverterError(f"the {name} converter is not installed", hint="run `make venv` to install the pinned tools")
    return found


def python_path_for_child() -> str:
    """PYTHONPATH for a `python -m <our module>` child: this checkout first, so the child runs the same code
    as its parent whether or not the project is installed."""
    root = str(Path(__file__).resolve().parents[1])
    existing = os.environ.get("PYTHONPATH", "")
    return root + (os.pathsep + existing if existing else "")


def run_contained(args: list[str], *, cwd: Path, output, timeout_s: float, env: dict) -> int | None:
    """The child's return code, or None if it ran out of time. Whatever happens here, including Ctrl-C,
    the child and everything it started are gone when this returns or raises."""
    process = spawn_child(args, cwd, output, env)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None
    finally:
        _kill_group(process)


def spawn_child(args: list[str], cwd: Path, output, env: dict) -> subprocess.Popen:
    """The child in a process group of its own, killed with us (see the module's docstring)."""
    return subprocess.Popen(
        args, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        start_new_session=True, preexec_fn=_die_with_parent(os.getpid()),
    )


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group outlives its leader while grandchildren run
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()


def _die_with_parent(parent_pid: int):
    """A preexec_fn asking Linux to SIGKILL the child when this process dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it
    set_parent_death_signal = 1  # PR_SET_PDEATHSIG

    def arm() -> None:
        prctl(set_parent_death_signal, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent_pid:  # the parent died before the request was armed
            os._exit(1)

    return arm


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"crashed ({name})"
    return f"failed (exit code {returncode})"


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no converter output was captured)"
    return "\n".join("    " + line[:200] for line in text[-lines:])
