"""Run a noisy third-party converter in a child process: private cwd, timeout, output to a log."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from exporter.errors import ConverterError

LOG_TAIL_LINES = 15


def run_converter(
    args: list[str], *, cwd: Path, log_path: Path, timeout_s: float, what: str, env: dict | None = None
) -> None:
    """Run `args` (argv list, no shell) in `cwd`, appending its output to `log_path`.

    Raises ConverterError naming `what`, with the last lines of its output, if it fails or times out.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child_env = {**os.environ, **(env or {})}
    with open(log_path, "a", encoding="utf-8", errors="replace") as log:
        log.write(f"\n$ {' '.join(args)}\n")
        log.flush()
        try:
            completed = subprocess.run(
                args, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s, env=child_env,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise ConverterError(
                f"{what} did not finish within {timeout_s:.0f} s",
                hint=f"see {log_path}; raise the timeout with --timeout if the model is large",
            ) from None
    if completed.returncode != 0:
        raise ConverterError(
            f"{what} failed (exit code {completed.returncode}):\n{log_tail(log_path)}",
            hint=f"the full converter output is in {log_path}",
        )


def run_python_module(module: str, module_args: list[str], **kwargs) -> None:
    run_converter([sys.executable, "-m", module, *module_args], **kwargs)


def log_tail(log_path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "(no converter output was captured)"
    return "\n".join("    " + line[:200] for line in text[-lines:])
