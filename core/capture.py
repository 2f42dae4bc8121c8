"""Keeping converter chatter out of the terminal: everything they print goes to the stage's log file."""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path


@contextlib.contextmanager
def output_to(path: str | Path):
    """Append to `path` everything written to stdout/stderr inside the block: Python prints and warnings
    (every warning, not only the first of its kind) and what native code writes to file descriptors 1 and 2."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "a", encoding="utf-8", errors="replace") as sink, warnings.catch_warnings(), \
            contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        warnings.simplefilter("always")
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sink.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
