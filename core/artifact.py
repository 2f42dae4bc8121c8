"""The values that cross the target interface (core/target.py): the ONNX model, a conversion job, an artifact,
and the Runner every artifact is loaded as."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from core.contract import InputContract
from core.errors import ConverterError
from core.parity import ParityThresholds

# Parity, calibration and explain runs are about numbers, not speed: one thread. Runtimes' worker threads
# spin-wait, and on a busy machine that costs many times the work (int8 MobileNetV2 in LiteRT: 15 ms of CPU
# per image on one thread, 145 ms on two, measured on a loaded 2-core host). Benchmarks set their own.
VALIDATION_THREADS = 1


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of the model's interface, its shape as the ONNX model has it (NCHW for images)."""

    name: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class OnnxModel:
    """The simplified, checked ONNX file every target converts from."""

    path: Path
    input_name: str
    input_shape: tuple[int, ...]
    outputs: tuple[TensorSpec, ...]  # in the model's order; every artifact's outputs are read back in it

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(output.name for output in self.outputs)

    @property
    def single_output(self) -> TensorSpec | None:
        """The output of a one-output model (what classifier-only features such as Core ML's class labels
        need), None when the model has several."""
        return self.outputs[0] if len(self.outputs) == 1 else None

    def outputs_to_manifest(self) -> list[dict]:
        return [{"name": output.name, "shape": list(output.shape)} for output in self.outputs]


@dataclass(frozen=True)
class ConversionJob:
    """Everything a target needs to convert, shared by all targets of one export."""

    onnx: OnnxModel
    contract: InputContract
    calibration: np.ndarray  # N x C x H x W float32, already preprocessed by the contract
    workdir: Path  # private scratch folder owned by this target; nothing else writes here
    log_path: Path  # converter output goes here, never to the terminal
    timeout_s: float = 1800.0
    int8_io: bool = False  # int8 input/output tensors for full-integer artifacts (else float I/O)
    torch_module: object | None = None  # the eval-mode torch.nn.Module, for targets that convert from PyTorch
    labels: tuple[str, ...] | None = None  # class names, one per output index, for targets that embed them
    coreml_palettize: bool = False  # Core ML: also build the 6-bit palettized package
    coreml_w8a8: bool = False  # Core ML: also build the package with 8-bit activations (iOS 17+)
    # The gate under which the int8 target keeps a few tensors in float (None: every op stays integer).
    int8_fallback_gate: ParityThresholds | None = None
    # Each output's kind (core/output_kinds.py), by ONNX name: the int8 target's fallback judges outputs by them.
    output_kinds: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """One deployable model file (plus companions, e.g. ncnn's .bin) produced by a target."""

    path: Path
    runtime: str  # the name of the target that made it (targets/__init__.py)
    precision: str  # "fp32" | "fp16" | "int8"
    companions: tuple[Path, ...] = ()
    details: dict = field(default_factory=dict)  # runtime-specific facts for the manifest

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path, *self.companions)

    def renamed(self, rename) -> "Artifact":
        """The same artifact with every file path passed through `rename(old_path) -> new_path`."""
        return Artifact(
            path=rename(self.path),
            runtime=self.runtime,
            precision=self.precision,
            companions=tuple(rename(p) for p in self.companions),
            details=self.details,
        )


# A model's outputs for a batch: {output name: N x ... float32}, in the model's output order.
Outputs = dict[str, np.ndarray]


class Runner(Protocol):
    """A loaded artifact. Layout, quantization and output order are the runner's business, not the caller's.

    A runtime starts with `run`, which is all a one-output model needs; runners that read several outputs also
    have `run_outputs` (OutputsRunner gives `run` from it). Callers go through outputs_of()."""

    def run(self, batch_nchw: np.ndarray) -> np.ndarray:
        """N x C x H x W float32 (preprocessed) -> N x ... float32: the output of a one-output model (ValueError
        when the model has several)."""
        ...


class OutputsRunner:
    """`run` for runners that implement `run_outputs`."""

    def run_outputs(self, batch_nchw: np.ndarray) -> Outputs:
        """N x C x H x W float32 (preprocessed) -> every output, by the ONNX model's names, in its order."""
        raise NotImplementedError

    def run(self, batch_nchw: np.ndarray) -> np.ndarray:
        return only_output(self.run_outputs(batch_nchw))


def outputs_of(runner: Runner, batch_nchw: np.ndarray, output_names: tuple[str, ...]) -> Outputs:
    """Every output of the runner's artifact by name: run_outputs where the runner has it, else its one `run`."""
    if not hasattr(runner, "run_outputs") and len(output_names) != 1:
        raise ConverterError(f"this runtime's runner reads one output and the model has {len(output_names)} "
                             f"({', '.join(output_names)})",
                             hint="export the model to another --target, or give the runner run_outputs()")
    result = every_output_call(runner)(batch_nchw)
    return result if isinstance(result, dict) else {output_names[0]: result}


def every_output_call(runner: Runner):
    """The runner's call computing every output of its artifact: what one frame costs in an app."""
    return runner.run_outputs if hasattr(runner, "run_outputs") else runner.run


def returned_values(result) -> tuple:
    """What a model's forward() returned, as its outputs in order: a tensor alone, a tuple's or list's items, a
    dict's values (the order the export names them in)."""
    if isinstance(result, dict):
        return tuple(result.values())
    if isinstance(result, (tuple, list)):
        return tuple(result)
    return (result,)


def to_onnx_shape(values: np.ndarray, onnx_shape: tuple[int, ...]) -> np.ndarray | None:
    """A runtime's tensor (already in the ONNX layout) in the ONNX tensor's shape: as it is, or reshaped when only
    unit axes differ (runtimes keep or drop them: N x 1000 x 1 x 1 vs N x 1000); None when more differs."""
    if values.shape == tuple(onnx_shape):
        return values
    if tuple(d for d in values.shape if d != 1) == tuple(d for d in onnx_shape if d != 1):
        return values.reshape(onnx_shape)
    return None


def only_output(outputs: Outputs) -> np.ndarray:
    if len(outputs) != 1:
        raise ValueError(f"the model has {len(outputs)} outputs ({', '.join(outputs)}); read them by name")
    return next(iter(outputs.values()))


def run_in_chunks(run_fixed_batch, batch_nchw: np.ndarray, model_batch: int):
    """Feed a model with a fixed batch size `model_batch` any number of samples (N must divide evenly).
    run_fixed_batch returns one array or Outputs; so does this, with the chunks joined along the batch axis."""
    batch_nchw = np.ascontiguousarray(batch_nchw, dtype=np.float32)
    if len(batch_nchw) % model_batch:
        raise ValueError(f"{len(batch_nchw)} samples do not split into batches of {model_batch}")
    chunks = [run_fixed_batch(batch_nchw[i : i + model_batch]) for i in range(0, len(batch_nchw), model_batch)]
    if isinstance(chunks[0], dict):
        return {name: np.concatenate([chunk[name] for chunk in chunks], axis=0).astype(np.float32)
                for name in chunks[0]}
    return np.concatenate(chunks, axis=0).astype(np.float32)
