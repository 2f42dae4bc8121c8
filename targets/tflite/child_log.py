"""What the converter child prints: one line per step, with its wall and CPU time (diagnosing a slow export
starts in the tflite log)."""
from __future__ import annotations

import time
from contextlib import contextmanager


def log(message: str) -> None:
    print(f"[mobile-export] {message}", flush=True)


@contextmanager
def phase(name: str):
    """Wall time of each step in the converter log: that is where a slow export is diagnosed."""
    started, cpu_started = time.perf_counter(), time.process_time()
    yield
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    log(f"{name}: {wall:.1f} s wall, {cpu:.1f} s CPU")
