"""Running .pte programs: in this process when it is ExecuTorch's interpreter (the host benchmark's child),
otherwise through a worker process under that interpreter (parity runs in the main virtualenv).

Both give every output by the ONNX model's names, in its order: a program's outputs are the module's outputs
flattened as torch.export flattens them, which is the order torch.onnx.export gave the ONNX outputs.
"""
from __future__ import annotations

import io
import os
import struct
import subprocess
import weakref
from pathlib import Path

import numpy as np

from core.artifact import VALIDATION_THREADS, OutputsRunner, run_in_chunks
from core.errors import ConverterError
from core.process import python_path_for_child
from targets.executorch.environment import executorch_python, runs_here

METHOD = "forward"
LENGTH_PREFIX = struct.Struct("<Q")


class InProcessRunner(OutputsRunner):
    """The program run by ExecuTorch's runtime in this process, `threads` XNNPACK threads."""

    in_process = True

    def __init__(self, path: Path, output_names: tuple[str, ...], batch: int, threads: int):
        import torch
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
        from executorch.runtime import Runtime

        _unsafe_reset_threadpool(threads)  # the process's XNNPACK threadpool, shared by every loaded program
        self._torch = torch
        self._method = Runtime.get().load_program(str(path)).load_method(METHOD)
        self._names, self._batch = output_names, batch

    def raw_outputs(self, batch_nchw: np.ndarray) -> list[np.ndarray]:
        """The program's outputs for one batch of its own size, in its order."""
        values = self._method.execute([self._torch.from_numpy(np.ascontiguousarray(batch_nchw, np.float32))])
        return [value.detach().numpy().copy() for value in values]

    def run_outputs(self, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
        return run_in_chunks(lambda chunk: named(self._names, self.raw_outputs(chunk)), batch_nchw, self._batch)


class WorkerRunner(OutputsRunner):
    """The program run by a worker process under ExecuTorch's interpreter (targets/executorch/worker.py),
    arrays passed as .npy bytes over its standard input and output."""

    in_process = False

    def __init__(self, path: Path, output_names: tuple[str, ...], batch: int, threads: int):
        self._names, self._batch = output_names, batch
        self._process = subprocess.Popen(
            [str(executorch_python()), "-m", "targets.executorch.worker", str(path), str(batch), str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": python_path_for_child()})
        self._finalizer = weakref.finalize(self, _stop, self._process)
        if self._process.stdout.read(1) != b"+":  # the worker says it loaded the program
            raise ConverterError(f"ExecuTorch could not load {path.name}",
                                 hint="re-export; if it persists, run the export with --target executorch and "
                                      "see OUT/<model>/logs/")

    def run_outputs(self, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
        return run_in_chunks(lambda chunk: named(self._names, self._round_trip(chunk)), batch_nchw, self._batch)

    def _round_trip(self, chunk: np.ndarray) -> list[np.ndarray]:
        send_array(self._process.stdin, chunk)
        count = LENGTH_PREFIX.unpack(_read(self._process.stdout, LENGTH_PREFIX.size))[0]
        return [receive_array(self._process.stdout) for _ in range(count)]

    def close(self) -> None:
        self._finalizer()


def runner_for(path: Path, output_names: tuple[str, ...], batch: int, threads: int = VALIDATION_THREADS):
    kind = InProcessRunner if runs_here() else WorkerRunner
    return kind(path, output_names, batch, threads)


def named(names: tuple[str, ...], values: list[np.ndarray]) -> dict[str, np.ndarray]:
    if len(values) != len(names):
        raise ConverterError(f"the ExecuTorch program gives {len(values)} outputs, the ONNX model {len(names)} "
                             f"({', '.join(names)})", hint="re-export the model; report the model if it persists")
    return dict(zip(names, values))


def send_array(stream, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    stream.write(LENGTH_PREFIX.pack(buffer.tell()) + buffer.getvalue())
    stream.flush()


def receive_array(stream) -> np.ndarray:
    size = LENGTH_PREFIX.unpack(_read(stream, LENGTH_PREFIX.size))[0]
    return np.load(io.BytesIO(_read(stream, size)), allow_pickle=False)


def _read(stream, size: int) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise ConverterError("the ExecuTorch worker stopped", hint="re-run; if it persists, re-export the model")
    return data


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
