"""A device profile from one benchncnn run on the user's own device (`mobile-export profiles fit`).

The per-layer costs are learned across the devices of the data (validation/projection_model.py); the user's run
only places the device: a few weights fitted to the networks it measured. The profile carries its own error:
when it is fitted, every device of the data is left out in turn and placed from exactly the networks the user
measured, and the held-out errors of the other networks become the profile's interval
(validation/projection_validation.py, held_out_benchmark_runs).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from typing import Callable

import numpy as np

from core.errors import InputError
from validation.calibration_data import DISTURBED_MEAN_OVER_MIN, load_calibration_data
from validation.error_distribution import DEFAULT_LEVEL, ErrorDistribution
from validation.projection_model import DEFAULT_RANK, fit_basis, fit_weights
from validation.projection_validation import (FAMILY_FOLDS, MIN_STRATUM_PAIRS, UNFAMILIAR, HeldOut,
                                              held_out_benchmark_runs, thread_bucket)

# The order benchncnn prints its networks in (benchmark/benchncnn.cpp); a short run is the first few of them.
BENCHNCNN_ORDER = (
    "squeezenet", "squeezenet_int8", "mobilenet", "mobilenet_int8", "mobilenet_v2", "mobilenet_v3", "shufflenet",
    "shufflenet_v2", "mnasnet", "proxylessnasnet", "efficientnet_b0", "efficientnetv2_b0", "regnety_400m",
    "blazeface", "googlenet", "googlenet_int8", "resnet18", "resnet18_int8", "alexnet", "vgg16", "vgg16_int8",
    "resnet50", "resnet50_int8", "squeezenet_ssd", "squeezenet_ssd_int8", "mobilenet_ssd", "mobilenet_ssd_int8",
    "mobilenet_yolo", "mobilenetv2_yolov3", "yolov4-tiny", "nanodet_m", "yolo-fastest-1.1", "yolo-fastestv2",
    "vision_transformer", "FastestDet",
)
QUICK_NETWORKS = BENCHNCNN_ORDER[:8]  # a handful: the first eight lines of a default benchncnn run
NETWORK_KINDS = ("float", "int8", UNFAMILIAR)
MIN_NETWORKS = DEFAULT_RANK  # one measurement per device weight at the very least

_SETTING = re.compile(r"^\s*(loop_count|num_threads|powersave|gpu_device|cooling_down)\s*=\s*(-?\d+)\s*$", re.MULTILINE)
# benchncnn prints "%20s  min = %7.2f  max = %7.2f  avg = %7.2f" per network
_TIMING = re.compile(r"^\s*(\S+)\s+min\s*=\s*([\d.]+)\s+max\s*=\s*([\d.]+)\s+avg\s*=\s*([\d.]+)\s*$")


@dataclass(frozen=True)
class BenchmarkRun:
    runs: tuple[tuple[str, float], ...]  # benchncnn network of the data, mean ms
    threads: int | None  # as printed in the header, if it was
    powersave: int | None
    gpu_device: int | None
    unknown: tuple[str, ...]  # timed names that are no network of the data (e.g. a param= path of the user's)
    disturbed: tuple[str, ...]  # set aside: mean far above the fastest loop


def parse_benchncnn_runs(text: str, known_networks: tuple[str, ...]) -> BenchmarkRun:
    """Every timing line of a benchncnn output, and the settings of its header."""
    settings = {key: int(value) for key, value in _SETTING.findall(text)}
    runs, unknown, disturbed = {}, [], []
    for match in map(_TIMING.match, text.splitlines()):
        if match is None:
            continue
        name = _network_name(match.group(1))
        fastest, mean = float(match.group(2)), float(match.group(4))
        if name not in known_networks:
            unknown.append(match.group(1))
        elif mean > DISTURBED_MEAN_OVER_MIN * fastest:
            disturbed.append(name)
        else:
            runs[name] = mean
    return BenchmarkRun(tuple(runs.items()), settings.get("num_threads"), settings.get("powersave"),
                        settings.get("gpu_device"), tuple(unknown), tuple(disturbed))


def _network_name(printed: str) -> str:
    """benchncnn prints a network's name, or the path given with param=: its file name without .param."""
    return printed.rsplit("/", 1)[-1].removesuffix(".param")


def benchncnn_text(runs: dict[str, tuple[float, float, float]], threads: int, powersave: int, loops: int = 8) -> str:
    """`runs` (network -> (min, max, avg) ms) printed the way benchncnn prints them, in benchncnn's order."""
    lines = [f"loop_count = {loops}", f"num_threads = {threads}", f"powersave = {powersave}", "gpu_device = -1",
             "cooling_down = 1"]
    position = {network: index for index, network in enumerate(BENCHNCNN_ORDER)}
    for network in sorted(runs, key=lambda n: position.get(n, len(position))):
        low, high, mean = runs[network]
        lines.append("%20s  min = %7.2f  max = %7.2f  avg = %7.2f" % (network, low, high, mean))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- the fit

@dataclass(frozen=True)
class FitRequest:
    name: str  # the profile's file stem
    display_name: str
    source: str  # where the run came from, one phrase
    threads: int
    powersave: int
    target_fps: float
    runtimes: tuple[str, ...]
    soc: str = ""
    hold_out_devices: tuple[str, ...] = ()  # devices of the data to leave out of everything (to validate a fit)


@dataclass(frozen=True)
class FittedProfile:
    toml: str
    errors: tuple[ErrorDistribution, ...]  # "float", "int8", "unfamiliar layers", "all"
    in_sample: tuple[tuple[str, float, float], ...]  # (network, measured ms, fitted ms) of the run itself
    validation: str
    devices_left_out: int


def fit_profile(run: BenchmarkRun, request: FitRequest,
                progress: Callable[[int, int], None] | None = None) -> FittedProfile:
    data = load_calibration_data()
    unknown_devices = [d for d in request.hold_out_devices if d not in data.devices]
    if unknown_devices:
        raise InputError(f"--hold-out-device {unknown_devices[0]!r} is not a device of the data",
                         hint="give the exact device string of validation/device_data/results_cpu.csv")
    networks = tuple(network for network, _ in run.runs)
    if len(networks) < MIN_NETWORKS:
        raise InputError(f"the benchmark run times {len(networks)} network(s) of the data "
                         f"({', '.join(networks) or 'none'}); a fit needs at least {MIN_NETWORKS}",
                         hint=f"run benchncnn with its default networks (at least the first {len(QUICK_NETWORKS)}: "
                              f"{', '.join(QUICK_NETWORKS)}) on the device and pass its whole output")
    rows = np.array([i for i, c in enumerate(data.configurations) if c.device not in request.hold_out_devices],
                    dtype=int)
    basis = fit_basis(data.features, data.latency_ms, rows)
    columns = [data.networks.index(network) for network in networks]
    measured = np.array([ms for _, ms in run.runs])
    weights = fit_weights(basis.components(data.features[columns]), measured)
    fitted = basis.components(data.features[columns]) @ weights
    pairs = held_out_benchmark_runs(data, networks, progress=progress, start=basis,
                                    excluded=request.hold_out_devices)
    if not pairs:
        raise InputError("no device of the data measured other networks than these, so the fit cannot be validated",
                         hint="include networks of several families (benchncnn's default run has them all)")
    errors = kind_distributions(pairs, request.threads)
    left_out = len({data.configurations[p.configuration].device for p in pairs})
    validation = (f"held out: leave one device out over {left_out} devices of the data, each placed from the same "
                  f"{len(networks)} networks and predicting every network of another family, with per-layer costs "
                  f"learned without that device or that network's family ({FAMILY_FOLDS} folds)")
    in_sample = tuple(zip(networks, measured.tolist(), fitted.tolist()))
    return FittedProfile(profile_toml(request, run, errors, validation), errors, in_sample, validation, left_out)


def kind_distributions(pairs: tuple[HeldOut, ...], threads: int) -> tuple[ErrorDistribution, ...]:
    """Per kind of network, the held-out errors at this thread count (unfamiliar graphs: at any thread count,
    there are few of them); and "all" pairs at this thread count, which a thin kind falls back to."""
    bucket = thread_bucket(threads)
    chosen = {"float": f"float, {bucket}", "int8": f"int8, {bucket}", UNFAMILIAR: UNFAMILIAR}
    result = []
    for kind, name in chosen.items():
        values = [p.log_ratio for p in pairs if p.stratum == name]
        if len(values) >= MIN_STRATUM_PAIRS:
            result.append(ErrorDistribution.from_log_ratios(kind, values))
    at_threads = [p.log_ratio for p in pairs if p.stratum.endswith(bucket)] or [p.log_ratio for p in pairs]
    result.append(ErrorDistribution.from_log_ratios("all", at_threads))
    return tuple(result)


def profile_toml(request: FitRequest, run: BenchmarkRun, errors: tuple[ErrorDistribution, ...], validation: str) -> str:
    quote = json.dumps  # a JSON string is a valid TOML basic string
    lines = [
        f"# {request.display_name}: fitted by `mobile-export profiles fit` on {date.today().isoformat()} from one "
        "benchncnn run of the device itself.",
        "# The per-layer costs are learned on the published runs of the data; the run below places the device. The",
        "# [calibration.error.*] tables are the held-out errors of such a fit (see `validation`): the interval.",
        f"threads = {request.threads}",
        f"runtimes = [{', '.join(quote(r) for r in request.runtimes)}]",
        f"target_fps = {request.target_fps:g}",
        f"notes = {quote(f'Fitted from a benchmark run: a CPU-only ncnn figure for {request.threads} thread(s).')}",
        "",
        "[device]",
        f"name = {quote(request.display_name)}",
    ]
    if request.soc:
        lines.append(f"soc = {quote(request.soc)}")
    lines += [
        "",
        "[calibration]",
        f"device = {quote(request.display_name)}",
        f"threads = {request.threads}",
        f"powersave = {request.powersave}",
        f"source = {quote(request.source)}",
        f"validation = {quote(validation)}",
    ]
    if request.hold_out_devices:
        lines.append(f"fitted_without = [{', '.join(quote(d) for d in request.hold_out_devices)}]")
    lines += ["", "[calibration.runs]  # benchncnn network = mean ms"]
    lines += [f"{quote(network)} = {ms:g}" for network, ms in run.runs]
    for error in errors:
        lines += ["", f"[calibration.error.{quote(error.stratum)}]", f"pairs = {error.pairs}",
                  f"median_abs_error_percent = {error.median_abs_error_percent:.2f}",
                  f"log_quantiles = [{', '.join(f'{q:.5f}' for q in error.log_quantiles)}]"]
    return "\n".join(lines) + "\n"


def summary_lines(fitted: FittedProfile, request: FitRequest) -> list[str]:
    errors = [abs(f / m - 1) for _, m, f in fitted.in_sample]
    lines = [f"fitted {request.name} on {len(fitted.in_sample)} benchncnn networks ({request.threads} thread(s), "
             f"powersave {request.powersave}); in-sample median error {np.median(errors) * 100:.1f} %",
             f"{fitted.validation}:"]
    for error in fitted.errors:
        low, high = error.ratio_interval(DEFAULT_LEVEL)
        lines.append(f"  {error.stratum:<18} median error {error.median_abs_error_percent:5.1f} %, "
                     f"{DEFAULT_LEVEL:.0%} interval x{low:.2f}-x{high:.2f} of the projection ({error.pairs} pairs)")
    return lines

