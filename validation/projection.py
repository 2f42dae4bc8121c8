"""Latency projection for a device profile: a figure, an interval whose coverage was measured, and the chance of
meeting a target.

The cost model (validation/projection_model.py) learns per-layer costs across the published benchncnn runs of
every device (validation/calibration_data.py) and places a device by a few weights. How the weights are found
depends on the profile's calibration (validation/profiles.py): from the device's own published runs, from a
proxy device's scaled by a stated factor, or from the user's own benchmark run (`mobile-export profiles fit`).

Each kind was validated the way it is used (validation/projection_validation.py), and a projection carries the
held-out error distribution of its kind and stratum (thread count, int8 or float, unfamiliar layers): the 90 %
interval is its 5th..95th percentile, the chance of meeting a target its CDF. bench/projection_error.py prints
how often such intervals cover held-out measurements.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from core.errors import InputError
from core.manifest import read_manifest
from validation.calibration_data import Configuration, device_infos, load_calibration_data
from validation.error_distribution import DEFAULT_LEVEL, ErrorDistribution
from graph.cost import graph_cost
from targets import interchange_target
from validation.profiles import Calibration, DeviceProfile
from validation.projection_model import CostBasis, cost_features, fit_basis, fit_weights
from validation.projection_validation import (UNFAMILIAR, distribution_for, distributions, familiar_layer_types,
                                              held_out_own_runs, held_out_proxies, is_unfamiliar,
                                              layer_type_families, proxy_pairs, stratum)

VERDICTS = ("pass", "uncertain", "FAIL")


@dataclass(frozen=True)
class Projection:
    latency_ms: float
    method: str  # one sentence: how the figure was obtained (always starts with "projected")
    error: ErrorDistribution  # held-out errors of projections of this kind and stratum
    validation: str  # one sentence: how `error` was measured
    level: float = DEFAULT_LEVEL

    @property
    def fps(self) -> float:
        return 1000.0 / self.latency_ms

    @property
    def interval_ms(self) -> tuple[float, float]:
        """The central `level` interval of the latency: (fast end, slow end)."""
        low, high = self.error.ratio_interval(self.level)
        return self.latency_ms * low, self.latency_ms * high

    def chance_of_meeting(self, target_fps: float) -> float:
        """Probability that the measured latency is at most 1000 / target_fps, from the held-out errors."""
        return self.error.chance_at_most((1000.0 / target_fps) / self.latency_ms)

    def verdict(self, target_fps: float) -> str:
        """"pass" only when even the slow end of the interval meets the target; "FAIL" when even the fast end
        misses it; "uncertain" in between."""
        fast, slow = self.interval_ms
        target_ms = 1000.0 / target_fps
        return "pass" if slow <= target_ms else "FAIL" if fast > target_ms else "uncertain"


def project_latency(profile: DeviceProfile, graph_path: Path, precision: str,
                    level: float = DEFAULT_LEVEL) -> Projection:
    """Projected latency of one inference on `profile`'s CPU with ncnn.

    `graph_path` is an .onnx or ncnn .param graph, or any other artifact of an export folder (.tflite,
    .mlpackage), whose work is then read from the export's ONNX graph, which every artifact was converted from.
    fp16 is projected like fp32: benchncnn, which the coefficients come from, already runs float networks with
    fp16 storage and arithmetic wherever the CPU has them. A Core ML int8 package has int8 weights only and
    computes in float, so it is projected as float. `level`: of the interval, which the gate's verdict uses."""
    calibration = profile.calibration
    if calibration is None:
        raise InputError(f"profile {profile.name} has no [calibration] table, so nothing can be projected for it",
                         hint="add [calibration] naming a device of validation/device_data/results_cpu.csv "
                              "(see README, 'Device profiles'), fit one with `mobile-export profiles fit`, "
                              "or measure on the device itself")
    device = calibrated_device(calibration, profile.display_name, profile.threads)
    source = cost_source(graph_path)
    computes_int8 = precision == "int8" and graph_path.suffix != ".mlpackage"
    cost = graph_cost(source, "int8" if computes_int8 else "fp32", _declared_input_shape(source))
    latency = float(device.components(cost_features(cost)) @ np.asarray(device.weights)) * device.scale
    unfamiliar = is_unfamiliar(cost, familiar_types())
    error = device.error_for(stratum(device.threads, computes_int8, unfamiliar))
    method = device.method
    if unfamiliar:
        method += ("; most of this graph's multiply-adds are in layer types fewer than two calibration networks "
                   "contain, so its interval is that of such graphs")
    if source != graph_path:
        method += f"; work counted on {source.name}, the graph {graph_path.name} was converted from"
    validation = f"{device.validation}; {_error_words(error)}"
    return Projection(max(latency, 1e-6), method, error, validation, level)


def _error_words(error: ErrorDistribution) -> str:
    low, high = error.ratio_interval(DEFAULT_LEVEL)
    return (f"{error.stratum}: median error {error.median_abs_error_percent:.0f} %, "
            f"{DEFAULT_LEVEL:.0%} interval x{low:.2f}-x{high:.2f} of the projection, from {error.pairs} held-out pairs")


# ---------------------------------------------------------------------------------------------- calibrations

@dataclass(frozen=True)
class CalibratedDevice:
    basis: CostBasis
    weights: tuple[float, ...]
    scale: float  # proxy scaling; 1 otherwise
    threads: int  # what the error strata are chosen by
    errors: tuple[ErrorDistribution, ...]
    method: str
    validation: str
    errors_by_kind: bool = False  # a fitted profile keeps one distribution per kind of network, not per stratum

    def components(self, features: np.ndarray) -> np.ndarray:
        return self.basis.components(features)

    def error_for(self, name: str) -> ErrorDistribution:
        table = {error.stratum: error for error in self.errors}
        return distribution_for(table, network_kind(name) if self.errors_by_kind else name)


def network_kind(stratum_name: str) -> str:
    """"float", "int8" or "unfamiliar layers": a stratum without its thread count."""
    return UNFAMILIAR if stratum_name == UNFAMILIAR else stratum_name.split(",")[0]


@lru_cache(maxsize=None)
def calibrated_device(calibration: Calibration, display_name: str, profile_threads: int) -> CalibratedDevice:
    basis = shared_basis(calibration.fitted_without)
    if calibration.is_benchmark_run:
        return _benchmark_run_device(calibration, basis)
    data = load_calibration_data()
    configuration = Configuration(calibration.device, calibration.threads, calibration.powersave)
    if configuration not in data.configurations:
        available = sorted(f"{c.threads} threads, powersave {c.powersave}" for c in data.configurations
                           if c.device == calibration.device)
        raise InputError(
            f"no published CPU runs of {calibration.device!r} at {calibration.threads} threads, "
            f"powersave {calibration.powersave}",
            hint=(f"this device has: {'; '.join(available)}" if available else
                  "calibration.device must be a device string of validation/device_data/results_cpu.csv"))
    row = data.index_of(configuration)
    seen = ~np.isnan(data.latency_ms[row])
    weights = fit_weights(basis.components(data.features[seen]), data.latency_ms[row, seen])
    runs = f"{int(seen.sum())} published benchncnn runs of {calibration.device} ({_threads_words(calibration)})"
    learned = f"per-layer costs learned on {len(data.configurations)} settings of {len(data.devices)} devices"
    if not calibration.is_proxy:
        return CalibratedDevice(basis, tuple(weights.tolist()), 1.0, calibration.threads,
                                tuple(own_runs_errors().values()),
                                f"projected (ncnn CPU): {learned}, placed on {runs}",
                                "held out: each network family left out of the whole fit")
    return CalibratedDevice(
        basis, tuple(weights.tolist()), calibration.scale, profile_threads, tuple(proxy_errors().values()),
        f"projected (ncnn CPU) via a proxy: {learned}, placed on {runs}, scaled x{calibration.scale:.3g} to "
        f"{display_name} ({calibration.scale_basis})",
        "held out: each device of the data projected from another device with the same cores, scaled by clocks "
        "and thread speedup as the proxy profiles are")


def _benchmark_run_device(calibration: Calibration, basis: CostBasis) -> CalibratedDevice:
    data = load_calibration_data()
    unknown = [network for network, _ in calibration.runs if network not in data.networks]
    if unknown:
        raise InputError(f"calibration.runs names {', '.join(unknown)}, which are not benchncnn networks of the data",
                         hint="keep the networks `mobile-export profiles fit` wrote, or fit the profile again")
    columns = [data.networks.index(network) for network, _ in calibration.runs]
    measured = np.array([ms for _, ms in calibration.runs])
    weights = fit_weights(basis.components(data.features[columns]), measured)
    return CalibratedDevice(
        basis, tuple(weights.tolist()), 1.0, calibration.threads, calibration.errors,
        f"projected (ncnn CPU): per-layer costs learned on {len(data.devices)} devices of the data, placed on "
        f"{len(columns)} benchncnn runs of {calibration.device} ({_threads_words(calibration)}) from "
        f"{calibration.source}", calibration.validation or "held out: leave one device out", errors_by_kind=True)


def _threads_words(calibration: Calibration) -> str:
    words = f"{calibration.threads} thread{'s' if calibration.threads > 1 else ''}"
    return words + (f", {_POWERSAVE_WORDS[calibration.powersave]}" if calibration.powersave else "")


_POWERSAVE_WORDS = {1: "little cores", 2: "big cores"}


@lru_cache(maxsize=None)
def shared_basis(fitted_without: tuple[str, ...] = ()) -> CostBasis:
    data = load_calibration_data()
    rows = np.array([i for i, c in enumerate(data.configurations) if c.device not in fitted_without], dtype=int)
    return fit_basis(data.features, data.latency_ms, rows)


@lru_cache(maxsize=None)
def own_runs_errors() -> dict[str, ErrorDistribution]:
    return distributions(_own_runs_held_out())


@lru_cache(maxsize=None)
def proxy_errors() -> dict[str, ErrorDistribution]:
    data = load_calibration_data()
    return distributions(held_out_proxies(data, _own_runs_held_out(), proxy_pairs(data, device_infos())))


@lru_cache(maxsize=None)
def _own_runs_held_out():
    return held_out_own_runs(load_calibration_data(), start=shared_basis())


@lru_cache(maxsize=None)
def familiar_types() -> frozenset[str]:
    return familiar_layer_types(layer_type_families(load_calibration_data().networks))


# ---------------------------------------------------------------------------------------------- graphs

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


def _declared_input_shape(graph_path: Path) -> tuple[int, ...] | None:
    """Our ncnn .param files carry no shapes; the export's manifest next to them records the input."""
    if graph_path.suffix != ".param":
        return None
    try:
        return read_manifest(graph_path.parent).input_shape[1:]
    except (InputError, KeyError):
        return None
