"""Stage-by-stage progress with wall times: what the user sees during long exports."""
from __future__ import annotations

import contextlib
import time
from typing import Callable


class StageClock:
    """Prints each stage as it starts and ends, and keeps its wall time for the manifest and benchmarks."""

    def __init__(self, echo: Callable[[str], None] = lambda line: None):
        self._echo = echo
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str):
        self._echo(f"· {name} ...")
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self._echo(f"✗ {name} failed after {time.perf_counter() - started:.1f} s")
            raise
        elapsed = time.perf_counter() - started
        self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
        self._echo(f"✓ {name} ({elapsed:.1f} s)")

    def note(self, line: str) -> None:
        self._echo(f"  {line}")
