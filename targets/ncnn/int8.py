"""ncnn int8 from the fp32 pair, calibrated on the export's photos; our own writer in the format ncnn2int8 writes.

ncnn's int8 layers (Convolution, ConvolutionDepthWise, InnerProduct with int8_scale_term) quantize their input
with one symmetric scale (127 / threshold) and their weights with one scale per output channel (per group for
depthwise); everything between them stays float. So a layer's int8 record is its int8 weights, their scales
and its input's threshold.

Each layer's input threshold follows graph/activation_ranges.py (the rule Core ML W8A8 shares), on |value|, with
ncnn fp32 running the calibration with one thread, so no thread count changes a byte. Bias correction of the
weights' rounding helped two of the five models that rule was chosen on and hurt two, within 0.0005: not done.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph import activation_ranges
from graph.ncnn_param import parse_ncnn_param
from targets.ncnn.runner import NcnnRunner, read_param
from targets.ncnn.weights import LayerWeights, read_weights

# int8_scale_term as ncnn2int8 sets it; ConvolutionDepthWise reads one weight scale per group.
INT8_SCALE_TERMS = {"Convolution": 2, "ConvolutionDepthWise": 1, "InnerProduct": 2}
INT8_TAG = 0x000D4B38  # ModelBin's storage flag for int8 values (padded to 4 bytes)
INT8_SCALE_TERM_KEY = 8
CALIBRATION_THREADS = 1
RANGE_DESCRIPTION = (f"each int8 layer's input, symmetric: {activation_ranges.DESCRIPTION}, of |value|; weights: "
                     "symmetric, one scale per output channel (per group for depthwise)")


@dataclass(frozen=True)
class Int8Record:
    """What the writer did, for the manifest."""

    int8_layers: int
    float_layers: tuple[str, ...]  # int8-capable layers kept float (zero input on every photo, or the fallback's)
    calibration_samples: int
    float_fallback: dict | None = None  # fallback.py's record, when a gate was given

    def to_details(self) -> dict:
        return {"activation_ranges": RANGE_DESCRIPTION, "calibration_samples": self.calibration_samples,
                "int8_layers": self.int8_layers, "float_layers": list(self.float_layers),
                **({"float_fallback": self.float_fallback} if self.float_fallback else {})}


@dataclass(frozen=True)
class Int8Plan:
    """Everything the writer needs, computed once: the fp32 pair read layer by layer and each int8 layer's input
    threshold. `write` can then keep any of the int8 layers float."""

    param_text: str
    stored: tuple[LayerWeights, ...]
    thresholds: dict[str, float]  # int8-capable layer -> its input's threshold (0: stays float)

    @property
    def int8_layers(self) -> tuple[str, ...]:
        return tuple(name for name, threshold in self.thresholds.items() if threshold > 0)

    def write(self, out_param: Path, out_weights: Path, keep_float: frozenset[str] = frozenset()) -> None:
        int8_names = set(self.int8_layers) - keep_float
        out_param.write_text(_int8_param(self.param_text, int8_names), encoding="utf-8")
        out_weights.write_bytes(b"".join(
            _int8_layer(entry, self.thresholds[entry.layer.name]) if entry.layer.name in int8_names else entry.stored
            for entry in self.stored))


def plan_int8(param: Path, weights: Path, calibration: np.ndarray) -> Int8Plan:
    layers = parse_ncnn_param(param)
    stored = read_weights(layers, weights.read_bytes())
    quantizable = [entry.layer for entry in stored if quantizable_layer(entry.layer)]
    return Int8Plan(param.read_text(encoding="utf-8"), stored,
                    input_thresholds(param, weights, quantizable, calibration))


def write_int8(param: Path, weights: Path, calibration: np.ndarray, out_param: Path, out_weights: Path,
               fallback=None) -> Int8Record:
    """The int8 pair of the fp32 `param`/`weights`, written to `out_param`/`out_weights`. `fallback`: a callable
    () -> (layers to keep float, its record) (fallback.py), or None for plain int8."""
    plan = plan_int8(param, weights, calibration)
    keep_float, record = fallback() if fallback else (frozenset(), None)
    plan.write(out_param, out_weights, keep_float)
    int8_layers = [name for name in plan.int8_layers if name not in keep_float]
    return Int8Record(len(int8_layers), tuple(name for name in plan.thresholds if name not in int8_layers),
                      len(calibration), record)


def quantizable_layer(layer) -> bool:
    """A layer ncnn computes in int8 with our scales. Grouped (not depthwise) convolutions stay float: the ncnn
    wheel computed ShuffleNetV1's (2-8 groups) to cosine 0.28 against fp32 with per-group scales as ncnn2int8
    writes them."""
    if layer.type == "ConvolutionDepthWise":
        return int(layer.get(7)) == int(layer.get(0))
    return layer.type in INT8_SCALE_TERMS


def input_thresholds(param: Path, weights: Path, layers, calibration: np.ndarray) -> dict[str, float]:
    """{layer name: its input's clipping threshold} over the calibration samples, on the grid."""
    import ncnn

    runner = NcnnRunner(param, weights, "fp32", threads=CALIBRATION_THREADS)
    input_blob = read_param(param).inputs[0]
    blobs = list(dict.fromkeys(layer.inputs[0] for layer in layers))
    percentiles: dict[str, list[float]] = {blob: [] for blob in blobs}
    for sample in np.ascontiguousarray(calibration, dtype=np.float32):
        extractor = runner.extractor()
        extractor.input(input_blob, ncnn.Mat(np.ascontiguousarray(sample)).clone())
        for blob in blobs:
            _, value = extractor.extract(blob)
            percentiles[blob].append(activation_ranges.sample_threshold(np.asarray(value)))
    # 0 for an input that is zero on every photo: that layer stays float
    return {layer.name: activation_ranges.calibrated(percentiles[layer.inputs[0]]) for layer in layers}


def _int8_param(text: str, int8_names: set[str]) -> str:
    lines = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[1] in int8_names:
            line = f"{line} {INT8_SCALE_TERM_KEY}={INT8_SCALE_TERMS[fields[0]]}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _int8_layer(entry: LayerWeights, threshold: float) -> bytes:
    """The layer's arrays as ncnn's load_model reads them with int8_scale_term set: int8 weights (flagged,
    padded to 4 bytes), the bias unchanged, the weight scales, the input scale."""
    layer = entry.layer
    rows = int(layer.get(7)) if layer.type == "ConvolutionDepthWise" else int(layer.get(0))
    weight = entry.arrays["weight"].astype(np.float64).reshape(rows, -1)
    largest = np.abs(weight).max(axis=1)
    scales = np.where(largest > 0, 127.0 / np.where(largest > 0, largest, 1.0), 1.0).astype(np.float32)
    levels = np.clip(np.round(weight * scales[:, None].astype(np.float64)), -127, 127).astype(np.int8).tobytes()
    parts = [struct.pack("<I", INT8_TAG), levels, b"\0" * (-len(levels) % 4)]
    if "bias" in entry.arrays:
        parts.append(entry.arrays["bias"].astype("<f4").tobytes())
    parts += [scales.astype("<f4").tobytes(), np.float32(127.0 / threshold).astype("<f4").tobytes()]
    return b"".join(parts)
