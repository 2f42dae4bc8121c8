"""Latency projection for a device profile: a cost model fitted on published benchncnn runs of that device.

The model: latency = sum over features of coefficient * feature, with one non-negative coefficient per feature
and per device (thread count and core selection included). The features are the graph's multiply-adds split by
how ncnn computes them (dense KxK, Winograd 3x3, 1x1/matmul, depthwise, matrix-vector, int8), the bytes of
weights and of activations moved, and a per-layer overhead (float and int8 layers apart: int8 layers pay for
requantization). Fitted to minimize the relative error, as MAPE measures it.

The error is stated, not assumed: leave-one-model-out (LOMO) takes each network out of the fit, with all its
precision variants (mobilenet and mobilenet_int8 share their graph, so keeping one in would leak it), predicts
it, and reports the median absolute percentage error over all held-out predictions. The naive baseline
(latency = k * MACs, fitted the same way) is evaluated identically.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.manifest import read_manifest
from graph.cost import KINDS, GraphCost, graph_cost
from targets import interchange_target
from validation.profiles import Calibration, DeviceProfile

DEVICE_DATA = Path(__file__).resolve().parent / "device_data"
RESULTS_CSV = DEVICE_DATA / "results_cpu.csv"
MODELS_DIR = DEVICE_DATA / "models"

MAC_KINDS = tuple(kind for kind in KINDS if kind != "other")
FEATURES = (*(f"{kind} MACs" for kind in MAC_KINDS), "int8 MACs", "weight bytes", "activation bytes", "layers",
            "int8 layers")


@dataclass(frozen=True)
class Projection:
    latency_ms: float
    method: str  # one sentence: how the figure was obtained (always starts with "projected")
    lomo_mape: float | None  # leave-one-model-out median absolute percentage error of the fit, in %
    baseline_mape: float | None  # the same for latency = k * MACs

    @property
    def fps(self) -> float:
        return 1000.0 / self.latency_ms


@dataclass(frozen=True)
class DeviceFit:
    device: str
    threads: int
    powersave: int
    models: tuple[str, ...]  # the benchncnn networks it was fitted on
    coefficients: tuple[float, ...]  # one per FEATURES entry, ms per unit
    baseline_ms_per_mac: float
    held_out_errors: tuple[float, ...]  # per model: leave-one-model-out prediction / measured - 1
    baseline_held_out_errors: tuple[float, ...]  # the same for the MACs-only baseline

    @property
    def lomo_mape(self) -> float:
        return median_ape(self.held_out_errors)

    @property
    def baseline_mape(self) -> float:
        return median_ape(self.baseline_held_out_errors)

    def lomo_mape_of(self, int8: bool) -> float:
        """The LOMO error over the int8 networks alone, or over the float ones."""
        return median_ape([e for m, e in zip(self.models, self.held_out_errors) if is_int8_network(m) == int8])

    def predict_ms(self, features: np.ndarray) -> float:
        return float(features @ np.asarray(self.coefficients))


def cost_features(cost: GraphCost) -> np.ndarray:
    """The cost model's feature vector (FEATURES order) of one graph. Pure."""
    values = dict.fromkeys(FEATURES, 0.0)
    for layer in cost.layers:
        is_int8 = layer.precision == "int8"
        if layer.kind in MAC_KINDS:
            values["int8 MACs" if is_int8 else f"{layer.kind} MACs"] += layer.macs
        values["weight bytes"] += layer.weight_bytes
        values["activation bytes"] += layer.activation_bytes
        values["int8 layers" if is_int8 else "layers"] += 1
    return np.array([values[name] for name in FEATURES])


def project_latency(profile: DeviceProfile, graph_path: Path, precision: str) -> Projection:
    """Projected latency of one inference on `profile`'s CPU with ncnn.

    `graph_path` is an .onnx or ncnn .param graph, or any other artifact of an export folder (.tflite,
    .mlpackage), whose work is then read from the export's ONNX graph, which every artifact was converted from.
    fp16 is projected like fp32: benchncnn, which the coefficients come from, already runs float networks with
    fp16 storage and arithmetic wherever the CPU has them. A Core ML int8 package has int8 weights only and
    computes in float, so it is projected as float."""
    calibration = profile.calibration
    if calibration is None:
        raise InputError(f"profile {profile.name} has no [calibration] table, so nothing can be projected for it",
                         hint="add [calibration] naming a device of validation/device_data/results_cpu.csv "
                              "(see README, 'Device profiles'), or measure on the device itself")
    fit = fit_device(calibration.device, calibration.threads, calibration.powersave)
    source = cost_source(graph_path)
    computes_int8 = precision == "int8" and graph_path.suffix != ".mlpackage"
    cost = graph_cost(source, "int8" if computes_int8 else "fp32", _declared_input_shape(source))
    latency = fit.predict_ms(cost_features(cost)) * calibration.scale
    method = _method(profile, calibration, fit, computes_int8)
    if source != graph_path:
        method += f"; work counted on {source.name}, the graph {graph_path.name} was converted from"
    return Projection(latency, method, fit.lomo_mape, fit.baseline_mape)


def cost_source(artifact_path: Path) -> Path:
    """The graph file whose layers stand for `artifact_path`'s work: itself if it is one we read, else the
    export's ONNX (named in manifest.json next to it)."""
    if artifact_path.suffix in (".onnx", ".param"):
        return artifact_path
    folder = artifact_path.parent
    try:
        interchange = read_manifest(folder).of_runtime(interchange_target().name)
        onnx_path = folder / interchange[0].path if interchange else None
    except InputError:
        onnx_path = None
    if onnx_path is None or not onnx_path.is_file():
        raise InputError(f"cannot project {artifact_path}: no ONNX graph of it in {folder}",
                         hint="project an .onnx or ncnn .param file, or an artifact inside its export folder")
    return onnx_path


def _method(profile: DeviceProfile, calibration: Calibration, fit: DeviceFit, int8: bool) -> str:
    runs = f"{len(fit.models)} benchncnn runs"
    threads = f"{fit.threads} thread{'s' if fit.threads > 1 else ''}" + (
        f", {_POWERSAVE_WORDS[fit.powersave]}" if fit.powersave else "")
    error = f"leave-one-model-out median error {fit.lomo_mape:.0f} % (MACs-only baseline {fit.baseline_mape:.0f} %)"
    if int8:
        int8_runs = sum(map(is_int8_network, fit.models))
        error += f", {fit.lomo_mape_of(int8=True):.0f} % over its {int8_runs} int8 networks alone"
    if not calibration.is_proxy:
        return f"projected (ncnn CPU): cost model fitted on {runs} of {fit.device} ({threads}); {error}"
    return (f"projected (ncnn CPU) via a proxy: cost model fitted on {runs} of {fit.device} ({threads}), "
            f"scaled x{calibration.scale:.3g} to {profile.display_name} ({calibration.scale_basis}); {error} "
            f"on the proxy, plus the scaling's error, which no published run of {profile.display_name} can check")


_POWERSAVE_WORDS = {1: "little cores", 2: "big cores"}


def _declared_input_shape(graph_path: Path) -> tuple[int, ...] | None:
    """Our ncnn .param files carry no shapes; the export's manifest next to them records the input."""
    if graph_path.suffix != ".param":
        return None
    try:
        return read_manifest(graph_path.parent).input_shape[1:]
    except (InputError, KeyError):
        return None


# ---------------------------------------------------------------------------------------------- fitting

@lru_cache(maxsize=None)
def fit_device(device: str, threads: int, powersave: int, results_csv: Path = RESULTS_CSV,
               models_dir: Path = MODELS_DIR) -> DeviceFit:
    latencies = calibration_latencies(results_csv)
    key = (device, threads, powersave)
    if key not in latencies:
        available = sorted({f"{t} threads, powersave {p}" for d, t, p in latencies if d == device})
        raise InputError(
            f"no published CPU runs of {device!r} at {threads} threads, powersave {powersave}",
            hint=(f"this device has: {'; '.join(available)}" if available else
                  "calibration.device must be a device string of validation/device_data/results_cpu.csv"))
    runs = {model: ms for model, ms in latencies[key].items() if (models_dir / f"{model}.param").is_file()}
    models = tuple(sorted(runs))
    features = np.array([cost_features(_benchmark_cost(models_dir / f"{m}.param")) for m in models])
    macs = np.array([[_benchmark_cost(models_dir / f"{m}.param").macs] for m in models], dtype=float)
    measured = np.array([runs[m] for m in models])
    families = [network_family(m) for m in models]
    return DeviceFit(
        device=device, threads=threads, powersave=powersave, models=models,
        coefficients=tuple(fit_relative_nnls(features, measured)),
        baseline_ms_per_mac=float(fit_relative_nnls(macs, measured)[0]),
        held_out_errors=tuple(lomo_errors(features, measured, families)),
        baseline_held_out_errors=tuple(lomo_errors(macs, measured, families)),
    )


@lru_cache(maxsize=None)
def calibration_latencies(results_csv: Path = RESULTS_CSV) -> dict[tuple[str, int, int], dict[str, float]]:
    """(device, threads, powersave) -> network -> mean of its published avg_ms (CPU rows only)."""
    samples: dict[tuple[str, int, int], dict[str, list[float]]] = {}
    with results_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if int(row["gpu_device"]) != -1:
                continue
            key = (row["device"], int(row["num_threads"]), int(row["powersave"]))
            samples.setdefault(key, {}).setdefault(row["model"], []).append(float(row["avg_ms"]))
    return {key: {model: sum(v) / len(v) for model, v in runs.items()} for key, runs in samples.items()}


@lru_cache(maxsize=None)
def _benchmark_cost(param_path: Path) -> GraphCost:
    return graph_cost(param_path)


def is_int8_network(model: str) -> bool:
    return model.endswith("_int8")


def network_family(model: str) -> str:
    """The network a benchncnn entry measures, whatever its precision: what leave-one-model-out holds out."""
    return model.removesuffix("_int8")


def fit_relative_nnls(features: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Non-negative coefficients minimizing the sum of squared relative errors (prediction / measured - 1)."""
    from scipy.optimize import nnls

    relative = features / measured[:, None]
    column_scale = relative.max(axis=0)
    column_scale[column_scale == 0] = 1.0  # a feature no network has gets coefficient 0
    coefficients, _ = nnls(relative / column_scale, np.ones(len(measured)))
    return coefficients / column_scale


def lomo_errors(features: np.ndarray, measured: np.ndarray, families: list[str]) -> list[float]:
    """Relative error of each network's prediction by a fit that never saw any of its variants."""
    errors = np.zeros(len(measured))
    family_array = np.array(families)
    for family in sorted(set(families)):
        held_out = family_array == family
        coefficients = fit_relative_nnls(features[~held_out], measured[~held_out])
        errors[held_out] = features[held_out] @ coefficients / measured[held_out] - 1.0
    return errors.tolist()


def median_ape(errors) -> float:
    """Median absolute percentage error, in %."""
    return float(np.median(np.abs(errors)) * 100) if len(errors) else math.nan
