"""The published benchncnn CPU latencies the projection learns from, as one table, and what each device is.

`validation/device_data/results_cpu.csv` holds one row per (device, threads, powersave, network); a setting of a
device ("configuration") is a row of the table, a benchncnn network a column. `devices.csv` says per device its
class (phone, board, server, ...) and its cores, so that the validation can report per class and try proxies.

A published run whose mean is far above its fastest loop was disturbed (other load, throttling): it says little
about the device's speed and is set aside, from the fit and from the validation alike. The rule and the number
set aside are printed by bench/projection_error.py.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from graph.cost import GraphCost, graph_cost
from validation.projection_model import cost_features

DEVICE_DATA = Path(__file__).resolve().parent / "device_data"
RESULTS_CSV = DEVICE_DATA / "results_cpu.csv"
DEVICES_CSV = DEVICE_DATA / "devices.csv"
MODELS_DIR = DEVICE_DATA / "models"
# benchncnn's mean over its loops more than 30 % above the fastest loop: the median published run is within
# 1.3 % of its fastest loop and 90 % are within 8.5 %, so such a mean measures interference, not the network.
DISTURBED_MEAN_OVER_MIN = 1.3


@dataclass(frozen=True)
class Configuration:
    """One published CPU setting of one device."""

    device: str
    threads: int
    powersave: int  # benchncnn's: 0 all cores, 1 little cores, 2 big cores


@dataclass(frozen=True)
class CoreCluster:
    count: int
    core: str
    ghz: float | None  # None: not stated by the source


@dataclass(frozen=True)
class DeviceInfo:
    device: str
    device_class: str  # "arm phone", "arm board", "arm desktop", "arm server", "x86", "other ISA"
    cores: tuple[CoreCluster, ...]  # fastest cluster first

    def cores_used(self, threads: int, powersave: int) -> tuple[CoreCluster, ...]:
        """The cores `threads` threads run on: the big ones first, the little ones first with powersave 1. More
        threads than cores share them."""
        clusters = tuple(reversed(self.cores)) if powersave == 1 else self.cores
        single = [CoreCluster(1, cluster.core, cluster.ghz) for cluster in clusters for _ in range(cluster.count)]
        return tuple(single[:threads])


@dataclass(frozen=True)
class CalibrationData:
    configurations: tuple[Configuration, ...]
    networks: tuple[str, ...]  # benchncnn network names, the columns
    latency_ms: np.ndarray  # configurations x networks; NaN where nothing usable was published
    features: np.ndarray  # networks x projection_model.FEATURES
    set_aside: tuple[tuple[Configuration, str], ...]  # disturbed runs left out

    def rows_of(self, device: str) -> np.ndarray:
        return np.array([i for i, c in enumerate(self.configurations) if c.device == device], dtype=int)

    def index_of(self, configuration: Configuration) -> int:
        return self.configurations.index(configuration)

    @property
    def devices(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.device for c in self.configurations))

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(network_family(n) for n in self.networks)


def network_family(network: str) -> str:
    """The network a benchncnn entry measures, whatever its precision: held out together (mobilenet and
    mobilenet_int8 share their graph, so keeping one in would leak the other)."""
    return network.removesuffix("_int8")


def is_int8_network(network: str) -> bool:
    return network.endswith("_int8")


@lru_cache(maxsize=None)
def load_calibration_data(results_csv: Path = RESULTS_CSV, models_dir: Path = MODELS_DIR,
                          keep_disturbed: bool = False) -> CalibrationData:
    runs, disturbed = _read_runs(results_csv)
    named = {network for by_network in runs.values() for network in by_network}
    networks = tuple(sorted(n for n in named if (models_dir / f"{n}.param").is_file()))
    configurations = tuple(sorted(runs, key=lambda c: (c.device, c.threads, c.powersave)))
    latency = np.full((len(configurations), len(networks)), np.nan)
    set_aside = []
    for row, configuration in enumerate(configurations):
        for column, network in enumerate(networks):
            if network not in runs[configuration]:
                continue
            if (configuration, network) in disturbed and not keep_disturbed:
                set_aside.append((configuration, network))
                continue
            latency[row, column] = runs[configuration][network]
    features = np.array([cost_features(benchmark_cost(models_dir / f"{n}.param")) for n in networks])
    return CalibrationData(configurations, networks, latency, features, tuple(set_aside))


def _read_runs(results_csv: Path) -> tuple[dict[Configuration, dict[str, float]], set[tuple[Configuration, str]]]:
    """Configuration -> network -> mean of its published avg_ms (CPU rows); and the disturbed (configuration,
    network) pairs."""
    samples: dict[Configuration, dict[str, list[float]]] = {}
    disturbed = set()
    with results_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if int(row["gpu_device"]) != -1:
                continue
            configuration = Configuration(row["device"], int(row["num_threads"]), int(row["powersave"]))
            mean, fastest = float(row["avg_ms"]), float(row["min_ms"])
            samples.setdefault(configuration, {}).setdefault(row["model"], []).append(mean)
            if mean > DISTURBED_MEAN_OVER_MIN * fastest:
                disturbed.add((configuration, row["model"]))
    return ({c: {net: sum(v) / len(v) for net, v in by_net.items()} for c, by_net in samples.items()}, disturbed)


@lru_cache(maxsize=None)
def benchmark_cost(param_path: Path) -> GraphCost:
    return graph_cost(param_path)


@lru_cache(maxsize=None)
def device_infos(devices_csv: Path = DEVICES_CSV) -> dict[str, DeviceInfo]:
    with devices_csv.open(newline="", encoding="utf-8") as handle:
        return {row["device"]: DeviceInfo(row["device"], row["class"], _clusters(row["cores"]))
                for row in csv.DictReader(handle)}


_CLUSTER = re.compile(r"^(\d+) x (\S+) @ (\S+)$")


def _clusters(text: str) -> tuple[CoreCluster, ...]:
    clusters = []
    for part in text.split(" + "):
        match = _CLUSTER.match(part.strip())
        if match is None:
            raise ValueError(f"devices.csv: cannot read core cluster {part!r} (expected 'COUNT x CORE @ GHZ')")
        count, core, ghz = match.groups()
        clusters.append(CoreCluster(int(count), core, None if ghz == "?" else float(ghz)))
    return tuple(clusters)


def published_runs(configuration: Configuration,
                   results_csv: Path = RESULTS_CSV) -> dict[str, tuple[float, float, float]]:
    """network -> (min, max, avg) ms as published for one configuration (the first row where one was published
    twice): what benchncnn printed on that device."""
    runs: dict[str, tuple[float, float, float]] = {}
    with results_csv.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            setting = Configuration(row["device"], int(row["num_threads"]), int(row["powersave"]))
            if setting == configuration and int(row["gpu_device"]) == -1:
                runs.setdefault(row["model"], (float(row["min_ms"]), float(row["max_ms"]), float(row["avg_ms"])))
    return runs
