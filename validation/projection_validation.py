"""How wrong the projection is, measured the way it is used, and the intervals that follow from it.

Three ways a profile is calibrated, three validations, each giving held-out (device setting, network) pairs with
log(measured / projected):
- own runs (the profile's device is in the data; the network is new): every network family is held out of the
  whole fit (5 folds of families), the device's weights come from its other networks.
- a benchmark run (`mobile-export profiles fit`: the device is not in the data, a handful of its networks were
  measured): leave one DEVICE out of the learned per-layer costs, and the predicted network families too; the
  device's weights come from its measured networks only.
- a proxy (no run of the device at all): each device of the data projected from another device with the same
  cores, scaled by clocks (and, for another thread count, by the median thread speedup of the other devices), as
  the proxy profiles are.

Errors differ with the thread count, with int8 against float networks, and for graphs made of layer types the
calibration networks barely contain, so each of these strata gets its own error distribution and interval.
Conformal in spirit: an interval is the 5th..95th percentile of held-out errors of its stratum, and its coverage
is checked on devices whose errors did not set it (bench/projection_error.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from validation.calibration_data import (MODELS_DIR, CalibrationData, Configuration, DeviceInfo, benchmark_cost,
                                         is_int8_network, network_family)
from validation.error_distribution import DEFAULT_LEVEL, ErrorDistribution
from graph.cost import GraphCost
from validation.projection_model import DEFAULT_RANK, CostBasis, fit_basis, fit_weights, relative_nnls

FAMILY_FOLDS = 5
REFIT_ITERATIONS = 30  # rounds of a refit started from the full fit: 100 moved the held-out median error < 0.5 points
MIN_STRATUM_PAIRS = 40  # fewer held-out pairs than this: the stratum borrows the distribution of all pairs
UNFAMILIAR = "unfamiliar layers"
# A graph is "unfamiliar" when most of its multiply-adds sit in layer types fewer than two calibration network
# families contain (a transformer's Gemm and MultiHeadAttention: only vision_transformer has them).
_FAMILIAR_FAMILIES = 2
_UNFAMILIAR_SHARE = 0.5


# ---------------------------------------------------------------------------------------------- strata

def thread_bucket(threads: int) -> str:
    if threads <= 1:
        return "1 thread"
    if threads <= 4:
        return "2-4 threads"
    return "5-8 threads" if threads <= 8 else "9+ threads"


def stratum(threads: int, int8: bool, unfamiliar: bool) -> str:
    if unfamiliar:
        return UNFAMILIAR
    return f"{'int8' if int8 else 'float'}, {thread_bucket(threads)}"


def familiar_layer_types(families_of_layer_types: dict[str, set[str]]) -> frozenset[str]:
    return frozenset(t for t, families in families_of_layer_types.items() if len(families) >= _FAMILIAR_FAMILIES)


def layer_type_families(networks: Iterable[str]) -> dict[str, set[str]]:
    """Layer type -> the network families (of `networks`) with multiply-adds in a layer of that type."""
    found: dict[str, set[str]] = {}
    for network in networks:
        for layer in benchmark_cost(MODELS_DIR / f"{network}.param").layers:
            if layer.macs:
                found.setdefault(layer.layer_type, set()).add(network_family(network))
    return found


def is_unfamiliar(cost: GraphCost, familiar: frozenset[str]) -> bool:
    total = sum(layer.macs for layer in cost.layers)
    strange = sum(layer.macs for layer in cost.layers if layer.macs and layer.layer_type not in familiar)
    return total > 0 and strange > _UNFAMILIAR_SHARE * total


# ---------------------------------------------------------------------------------------------- distributions

@dataclass(frozen=True)
class HeldOut:
    configuration: int  # row of CalibrationData
    network: int  # column of CalibrationData
    log_ratio: float  # log(measured / projected)
    stratum: str
    baseline_log_ratio: float = math.nan  # the same for latency = k * MACs, fitted on the same measurements


def distributions(pairs: Iterable[HeldOut]) -> dict[str, ErrorDistribution]:
    """One distribution per stratum, plus "all" over every pair; a thin stratum borrows "all"."""
    by_stratum: dict[str, list[float]] = {}
    everything = []
    for pair in pairs:
        by_stratum.setdefault(pair.stratum, []).append(pair.log_ratio)
        everything.append(pair.log_ratio)
    result = {"all": ErrorDistribution.from_log_ratios("all", everything)}
    for name, values in by_stratum.items():
        if len(values) >= MIN_STRATUM_PAIRS:
            result[name] = ErrorDistribution.from_log_ratios(name, values)
    return result


def distribution_for(table: dict[str, ErrorDistribution], name: str) -> ErrorDistribution:
    return table.get(name, table["all"])


# ---------------------------------------------------------------------------------------------- folds

def family_folds(families: Iterable[str], folds: int = FAMILY_FOLDS) -> dict[str, int]:
    """Network family -> fold, round robin over the sorted names (deterministic)."""
    return {family: index % folds for index, family in enumerate(sorted(set(families)))}


def _unfamiliar_columns(data: CalibrationData, training_columns: np.ndarray) -> np.ndarray:
    familiar = familiar_layer_types(layer_type_families(data.networks[c] for c in training_columns))
    return np.array([is_unfamiliar(benchmark_cost(MODELS_DIR / f"{n}.param"), familiar) for n in data.networks])


def _stratum_of(data: CalibrationData, row: int, column: int, unfamiliar: np.ndarray) -> str:
    return stratum(data.configurations[row].threads, is_int8_network(data.networks[column]), bool(unfamiliar[column]))


def _masked(latency: np.ndarray, columns: np.ndarray) -> np.ndarray:
    hidden = latency.copy()
    hidden[:, columns] = np.nan
    return hidden


def _macs(data: CalibrationData) -> np.ndarray:
    return np.array([[benchmark_cost(MODELS_DIR / f"{n}.param").macs] for n in data.networks], float)


# ---------------------------------------------------------------------------------------------- own runs

def held_out_own_runs(data: CalibrationData, rank: int = DEFAULT_RANK, folds: int = FAMILY_FOLDS,
                      start: CostBasis | None = None) -> tuple[HeldOut, ...]:
    """Every (configuration, network) predicted by a fit that never saw the network's family on any device."""
    fold_of = family_folds(data.families, folds)
    column_fold = np.array([fold_of[f] for f in data.families])
    every_row = np.arange(len(data.configurations))
    start = start or fit_basis(data.features, data.latency_ms, every_row, rank)
    macs = _macs(data)
    pairs = []
    for fold in range(folds):
        held = np.nonzero(column_fold == fold)[0]
        kept = np.nonzero(column_fold != fold)[0]
        training = _masked(data.latency_ms, held)
        basis = fit_basis(data.features, training, every_row, rank, start, REFIT_ITERATIONS)
        components = basis.components(data.features)
        unfamiliar = _unfamiliar_columns(data, kept)
        for row in every_row:
            seen = ~np.isnan(training[row])
            targets = [c for c in held if not np.isnan(data.latency_ms[row, c])]
            if not targets or seen.sum() < rank:
                continue
            weights = fit_weights(components[seen], training[row, seen])
            k = relative_nnls(macs[seen], training[row, seen])
            pairs += [_pair(data, row, c, components[c] @ weights, macs[c] @ k, unfamiliar) for c in targets]
    return tuple(pairs)


def _pair(data: CalibrationData, row: int, column: int, projected: float, baseline: float,
          unfamiliar: np.ndarray) -> HeldOut:
    measured = data.latency_ms[row, column]
    return HeldOut(row, column, _log_ratio(measured, projected), _stratum_of(data, row, column, unfamiliar),
                   _log_ratio(measured, baseline))


def _log_ratio(measured: float, projected: float) -> float:
    # a projection of 0 (every coefficient it needs is 0) is as wrong as a projection can be; keep it finite
    return float(math.log(measured / max(float(projected), 1e-6 * measured)))


# ---------------------------------------------------------------------------------------------- a benchmark run

def held_out_benchmark_runs(data: CalibrationData, anchors: tuple[str, ...], rank: int = DEFAULT_RANK,
                            folds: int = FAMILY_FOLDS, devices: Iterable[str] | None = None,
                            progress: Callable[[int, int], None] | None = None,
                            start: CostBasis | None = None, excluded: tuple[str, ...] = ()) -> tuple[HeldOut, ...]:
    """Leave one device out: for each device, the per-layer costs are learned without it (and without the
    predicted network families); each of its configurations is placed from its `anchors` measurements alone; every
    network of another family than the anchors' is predicted. `excluded` devices take no part at all."""
    anchor_columns = np.array([data.networks.index(a) for a in anchors if a in data.networks], dtype=int)
    anchor_families = {data.families[c] for c in anchor_columns}
    target_families = sorted({f for f in data.families if f not in anchor_families})
    fold_of = family_folds(target_families, folds)
    column_fold = np.array([fold_of.get(f, -1) for f in data.families])
    every_row = np.array([i for i, c in enumerate(data.configurations) if c.device not in excluded], dtype=int)
    start = start or fit_basis(data.features, data.latency_ms, every_row, rank)
    macs = _macs(data)
    chosen = [d for d in (devices if devices is not None else data.devices) if d not in excluded]
    pairs = []
    for done, device in enumerate(chosen):
        device_rows = data.rows_of(device)
        other_rows = np.setdiff1d(every_row, device_rows)
        for fold in range(min(folds, len(target_families))):
            held = np.nonzero(column_fold == fold)[0]
            training = _masked(data.latency_ms, held)
            basis = fit_basis(data.features, training, other_rows, rank, start, REFIT_ITERATIONS)
            components = basis.components(data.features)
            unfamiliar = _unfamiliar_columns(data, np.nonzero(column_fold != fold)[0])
            for row in device_rows:
                measured_anchors = [c for c in anchor_columns if not np.isnan(data.latency_ms[row, c])]
                targets = [c for c in held if not np.isnan(data.latency_ms[row, c])]
                if len(measured_anchors) < rank or not targets:
                    continue
                measured = data.latency_ms[row, measured_anchors]
                weights = fit_weights(components[measured_anchors], measured)
                k = relative_nnls(macs[measured_anchors], measured)
                pairs += [_pair(data, row, c, components[c] @ weights, macs[c] @ k, unfamiliar) for c in targets]
        if progress is not None:
            progress(done + 1, len(chosen))
    return tuple(pairs)


# ---------------------------------------------------------------------------------------------- proxies

@dataclass(frozen=True)
class ProxyPair:
    target: int  # configuration row projected
    proxy: int  # configuration row it was projected from
    scale: float  # latency multiplier proxy -> target


def proxy_pairs(data: CalibrationData, infos: dict[str, DeviceInfo]) -> tuple[ProxyPair, ...]:
    """Every (target, proxy) of different devices whose threads run on one and the same core type, with every
    clock known: scale = proxy clock / target clock, times the median thread speedup of the other devices when
    the thread counts differ (as the Raspberry Pi 4 profile does from its 2-thread RK3399 proxy)."""
    pairs = []
    for target_row, target in enumerate(data.configurations):
        target_cores = _single_core_type(infos, target)
        if target_cores is None:
            continue
        for proxy_row, proxy in enumerate(data.configurations):
            proxy_cores = _single_core_type(infos, proxy)
            if proxy.device == target.device or proxy_cores is None or proxy_cores[0] != target_cores[0]:
                continue
            scale = proxy_cores[1] / target_cores[1]
            if proxy.threads != target.threads:
                speedup = thread_speedup(data, proxy.threads, target.threads, exclude={proxy.device, target.device})
                if speedup is None:
                    continue
                scale *= speedup
            pairs.append(ProxyPair(target_row, proxy_row, scale))
    return tuple(pairs)


def _single_core_type(infos: dict[str, DeviceInfo], configuration: Configuration) -> tuple[str, float] | None:
    """(core, mean clock) of the cores a configuration's threads run on, if that is known and of one type: not
    when threads outnumber cores, nor when, with powersave 0 on a device of unequal clusters, the scheduler picks
    (published single-thread runs of phones at powersave 0 ran on a little core)."""
    info = infos.get(configuration.device)
    if info is None:
        return None
    cores = sum(cluster.count for cluster in info.cores)
    unequal = len({(cluster.core, cluster.ghz) for cluster in info.cores}) > 1
    if configuration.threads > cores or (configuration.powersave == 0 and unequal and configuration.threads < cores):
        return None
    used = info.cores_used(configuration.threads, configuration.powersave)
    if len({c.core for c in used}) != 1 or any(c.ghz is None for c in used):
        return None
    return used[0].core, sum(c.ghz for c in used) / len(used)


def thread_speedup(data: CalibrationData, from_threads: int, to_threads: int, exclude: set[str]) -> float | None:
    """Median over devices (not in `exclude`) published at both thread counts of their median latency ratio
    T(to_threads) / T(from_threads); None with fewer than two such devices."""
    ratios = []
    for device in data.devices:
        if device in exclude:
            continue
        rows = {data.configurations[r].threads: r for r in data.rows_of(device)}
        if from_threads in rows and to_threads in rows:
            ratio = data.latency_ms[rows[to_threads]] / data.latency_ms[rows[from_threads]]
            ratio = ratio[~np.isnan(ratio)]
            if len(ratio):
                ratios.append(float(np.median(ratio)))
    return float(np.median(ratios)) if len(ratios) >= 2 else None


def held_out_proxies(data: CalibrationData, own: tuple[HeldOut, ...],
                     pairs: tuple[ProxyPair, ...]) -> tuple[HeldOut, ...]:
    """Each target network projected from the proxy's own-runs projection of it (its family held out of the
    fit, as a new model is), times the proxy scale."""
    projected = {(p.configuration, p.network): data.latency_ms[p.configuration, p.network] * math.exp(-p.log_ratio)
                 for p in own}
    strata = {(p.configuration, p.network): p.stratum for p in own}
    result = []
    for pair in pairs:
        target_threads = data.configurations[pair.target].threads
        for column in range(len(data.networks)):
            measured = data.latency_ms[pair.target, column]
            key = (pair.proxy, column)
            if math.isnan(measured) or key not in projected:
                continue
            unfamiliar = strata[key] == UNFAMILIAR
            name = stratum(target_threads, is_int8_network(data.networks[column]), unfamiliar)
            result.append(HeldOut(pair.target, column, _log_ratio(measured, projected[key] * pair.scale), name))
    return tuple(result)


# ---------------------------------------------------------------------------------------------- coverage

def leave_one_device_out_bounds(data: CalibrationData, pairs: tuple[HeldOut, ...],
                                level: float = DEFAULT_LEVEL) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, the interval (log ratios) its stratum gets from the held-out errors of the OTHER devices: what
    the coverage of an interval is checked against, so no device vouches for itself."""
    device_of = np.array([data.configurations[p.configuration].device for p in pairs])
    low, high = np.zeros(len(pairs)), np.zeros(len(pairs))
    for device in sorted(set(device_of)):
        own = device_of == device
        table = distributions(p for p, mine in zip(pairs, own) if not mine)
        for index in np.nonzero(own)[0]:
            ratio_low, ratio_high = distribution_for(table, pairs[index].stratum).ratio_interval(level)
            low[index], high[index] = math.log(ratio_low), math.log(ratio_high)
    return low, high
