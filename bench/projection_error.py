"""The FPS projection's error, measured the way each kind of profile uses it.

Usage: .venv/bin/python bench/projection_error.py [--leave-one-device-out] [--fit-demo DEVICE] [--keep-disturbed]
                                                  [--profiles-dir DIR]

Default: per profile, its calibration kind and the held-out error of projections like its own (median error and
90 % interval at its thread count, float and int8).

--leave-one-device-out: every device of the data left out in turn, as a device the user brings is: the per-layer
costs are learned without it (and without the predicted network families), it is placed from a benchmark run of
the first networks benchncnn prints, and every other network of it is predicted. Printed per device class:
median and worst error, the coverage of the 90 % interval (set by the OTHER devices' errors), the MACs-only
baseline fitted on the same runs, and what the default gate does with each held-out pair at several targets.
The same for projections from a device's own runs (network families held out) and from a proxy device.

--fit-demo DEVICE: writes a benchncnn-format text file of DEVICE's first networks (from the data), runs
`mobile-export profiles fit` on it with DEVICE held out of the fit, and compares the profile's projections of
DEVICE's other networks with the published measurements.
"""
from __future__ import annotations

import argparse
import math
from collections import Counter
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from validation.calibration_data import (DISTURBED_MEAN_OVER_MIN, CalibrationData, device_infos,  # noqa: E402
                                         is_int8_network, load_calibration_data, published_runs)
from validation.error_distribution import DEFAULT_LEVEL  # noqa: E402
from validation.profiles import load_profiles  # noqa: E402
from validation.projection_fit import QUICK_NETWORKS  # noqa: E402
from validation.projection_validation import (HeldOut, held_out_benchmark_runs, held_out_own_runs,  # noqa: E402
                                              held_out_proxies, leave_one_device_out_bounds, proxy_pairs, stratum,
                                              thread_bucket)

TARGETS_FPS = (10, 15, 30, 60)
GATE_LEVELS = (DEFAULT_LEVEL, 0.98)


def absolute_error(log_ratios: np.ndarray) -> np.ndarray:
    """|projected / measured - 1| from log(measured / projected)."""
    return np.abs(np.exp(-log_ratios) - 1.0)


# ---------------------------------------------------------------------------------------------- per profile

def profile_table(profile_dirs: list[Path]) -> None:
    from validation.projection import calibrated_device

    print("Per profile: held-out error of projections like its own, at its thread count "
          f"(median |error|, {DEFAULT_LEVEL:.0%} interval of measured / projected)")
    print(f"{'profile':<20} {'calibration':<14} {'float':>28} {'int8':>28}")
    for profile in load_profiles(profile_dirs).values():
        if profile.calibration is None:
            print(f"{profile.name:<20} none")
            continue
        device = calibrated_device(profile.calibration, profile.display_name, profile.threads)
        bucket = thread_bucket(device.threads)
        cells = []
        for kind in ("float", "int8"):
            error = device.error_for(f"{kind}, {bucket}")
            low, high = error.ratio_interval(DEFAULT_LEVEL)
            cells.append(f"{error.median_abs_error_percent:5.1f}% x{low:.2f}-x{high:.2f} ({error.pairs})")
        print(f"{profile.name:<20} {profile.calibration.kind:<14} {cells[0]:>28} {cells[1]:>28}")


# ---------------------------------------------------------------------------------------------- validation

def scenario_report(title: str, data: CalibrationData, pairs: tuple[HeldOut, ...], with_baseline: bool) -> None:
    infos = device_infos()
    log_ratios = np.array([p.log_ratio for p in pairs])
    baseline = np.array([p.baseline_log_ratio for p in pairs])
    devices = np.array([data.configurations[p.configuration].device for p in pairs])
    classes = np.array([infos[d].device_class for d in devices])
    low, high = leave_one_device_out_bounds(data, pairs, DEFAULT_LEVEL)
    covered = (log_ratios >= low) & (log_ratios <= high)
    print(f"\n{title}")
    header = (f"{'device class':<14} {'devices':>7} {'pairs':>6} {'median':>7} {'worst':>7} "
              f"{'cover ' + format(DEFAULT_LEVEL, '.0%'):>9}")
    if with_baseline:
        header += f" {'MACs median':>12} {'MACs worst':>11}"
    print(header)
    for name in (*sorted(set(classes)), "all CPU devices"):
        chosen = classes == name if name != "all CPU devices" else np.ones(len(pairs), bool)
        error = absolute_error(log_ratios[chosen])
        line = (f"{name:<14} {len(set(devices[chosen])):>7} {chosen.sum():>6} {np.median(error) * 100:>6.1f}% "
                f"{error.max() * 100:>6.0f}% {covered[chosen].mean() * 100:>8.1f}%")
        if with_baseline:
            base = absolute_error(baseline[chosen])
            line += f" {np.median(base) * 100:>11.1f}% {base.max() * 100:>10.0f}%"
        print(line)
    per_device = [np.median(absolute_error(log_ratios[devices == d])) * 100 for d in sorted(set(devices))]
    print(f"median error per device: median {np.median(per_device):.1f} %, worst device {max(per_device):.1f} %")
    strata = np.array([p.stratum for p in pairs])
    print("coverage per stratum: " + "; ".join(f"{s} {covered[strata == s].mean() * 100:.1f} % of {(strata == s).sum()}"
                                               for s in sorted(set(strata))))
    gate_report(data, pairs, log_ratios)


def gate_report(data: CalibrationData, pairs: tuple[HeldOut, ...], log_ratios: np.ndarray) -> None:
    """What the gate says of each held-out pair, with the interval its stratum gets from the other devices."""
    measured = np.array([data.latency_ms[p.configuration, p.network] for p in pairs])
    projected = measured * np.exp(-log_ratios)
    for level in GATE_LEVELS:
        low, high = leave_one_device_out_bounds(data, pairs, level)
        name = "default gate" if level == DEFAULT_LEVEL else "stricter gate"
        print(f"{name}: a pair passes when the slow end of its {level:.0%} interval meets the target")
        print(f"  {'target':>8} {'meet it':>8} {'passed':>7} {'passed, missed':>15} {'uncertain':>10} {'FAIL':>6} "
              f"{'central estimate: passed, missed':>33}")
        for fps in TARGETS_FPS:
            target_ms = 1000.0 / fps
            meets = measured <= target_ms
            passed = projected * np.exp(high) <= target_ms
            failed = projected * np.exp(low) > target_ms
            central = projected <= target_ms
            print(f"  {fps:>5} FPS {meets.sum():>8} {passed.sum():>7} {(passed & ~meets).sum():>15} "
                  f"{(~passed & ~failed).sum():>10} {failed.sum():>6} {central.sum():>22}, {(central & ~meets).sum()}")
        missed = np.nonzero((projected * np.exp(high) <= 1000.0 / 30) & (measured > 1000.0 / 30))[0]
        counted = Counter((pairs[i].configuration, pairs[i].network) for i in missed)
        for (row, column), times in sorted(counted.items()):
            configuration = data.configurations[row]
            print(f"    passed at 30 FPS, measured slower: {data.networks[column]} on {configuration.device[:48]} "
                  f"({configuration.threads} threads) measured {data.latency_ms[row, column]:.1f} ms"
                  + (f" ({times} proxies)" if times > 1 else ""))


def leave_one_device_out(data: CalibrationData) -> None:
    set_aside = (f"{len(data.set_aside)} disturbed runs set aside (mean more than {DISTURBED_MEAN_OVER_MIN} x the "
                 "fastest loop)" if data.set_aside else "no run set aside")
    print(f"Data: {len(data.configurations)} published CPU settings of {len(data.devices)} devices, "
          f"{len(data.networks)} benchncnn networks; {set_aside}")
    print(f"Errors are |projected / measured - 1| of held-out (device setting, network) pairs. The {DEFAULT_LEVEL:.0%} "
          "interval of a pair is the 5th..95th percentile of the held-out errors of the OTHER devices in its stratum "
          "(threads, int8 or float, unfamiliar layers); coverage is the share of pairs inside it.")

    def progress(done: int, total: int) -> None:
        if done % 12 == 0 or done == total:
            print(f"  ... {done}/{total} devices left out", file=sys.stderr, flush=True)

    anchors = tuple(network for network in QUICK_NETWORKS if network in data.networks)
    pairs = held_out_benchmark_runs(data, anchors, progress=progress)
    scenario_report(f"Leave one device out, placed from a benchmark run of {len(anchors)} networks "
                    f"({', '.join(anchors)}); the other networks predicted. MACs: latency = k x MACs, k from the "
                    "same runs", data, pairs, with_baseline=True)
    own = held_out_own_runs(data)
    scenario_report("Own runs (the device is in the data, the network is new): each network family held out of "
                    "the whole fit, the device placed on its other networks", data, own, with_baseline=True)
    proxies = held_out_proxies(data, own, proxy_pairs(data, device_infos()))
    scenario_report("Proxy (no run of the device): each device projected from another device with the same cores, "
                    "scaled by clock and thread speedup", data, proxies, with_baseline=False)


# ---------------------------------------------------------------------------------------------- fit demo

def fit_demo(data: CalibrationData, device: str) -> None:
    from click.testing import CliRunner

    from exporter.cli import main
    from validation.calibration_data import MODELS_DIR, benchmark_cost
    from validation.profiles import load_profile
    from validation.projection import calibrated_device, familiar_types
    from validation.projection_fit import benchncnn_text
    from validation.projection_validation import is_unfamiliar

    rows = data.rows_of(device)
    if not len(rows):
        raise SystemExit(f"no device {device!r} in the data; devices: {', '.join(data.devices)}")
    row = max(rows, key=lambda r: (data.configurations[r].threads == 4, data.configurations[r].threads))
    configuration = data.configurations[row]
    measured = {n: data.latency_ms[row, c] for c, n in enumerate(data.networks)
                if not math.isnan(data.latency_ms[row, c])}
    published = published_runs(configuration)
    runs = {n: published[n] for n in QUICK_NETWORKS if n in published}
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "RESULTS.txt"
        results.write_text(benchncnn_text(runs, configuration.threads, configuration.powersave), encoding="utf-8")
        print(f"benchncnn output written for {device} ({configuration.threads} threads, powersave "
              f"{configuration.powersave}): {len(runs)} networks\n" + results.read_text(encoding="utf-8"))
        command = ["profiles", "fit", str(results), "--name", "my-phone", "--out-dir", folder,
                   "--hold-out-device", device]
        print("$ mobile-export " + " ".join(command[:-1]) + f" '{device}'")
        outcome = CliRunner().invoke(main, command, catch_exceptions=False)
        print(outcome.output)
        if outcome.exit_code != 0:
            raise SystemExit(outcome.exit_code)
        profile = load_profile(Path(folder) / "my-phone.toml")
    model = calibrated_device(profile.calibration, profile.display_name, profile.threads)
    print(f"{'network':<22} {'measured ms':>12} {'projected ms':>13} {'error':>7}  in the 90 % interval")
    errors, inside = [], []
    for network, ms in measured.items():
        if network in runs or network.removesuffix("_int8") in {r.removesuffix("_int8") for r in runs}:
            continue
        projected = float(model.components(data.features[data.networks.index(network)]) @ np.asarray(model.weights))
        unfamiliar = is_unfamiliar(benchmark_cost(MODELS_DIR / f"{network}.param"), familiar_types())
        low, high = model.error_for(stratum(profile.threads, is_int8_network(network), unfamiliar)).ratio_interval()
        errors.append(projected / ms - 1)
        inside.append(low <= ms / projected <= high)
        print(f"{network:<22} {ms:>12.2f} {projected:>13.2f} {errors[-1] * 100:>+6.0f}%  "
              f"{'yes' if inside[-1] else 'NO'}")
    print(f"\n{len(errors)} networks of other families than the run's: median |error| "
          f"{np.median(np.abs(errors)) * 100:.1f} %, worst {np.max(np.abs(errors)) * 100:.0f} %, "
          f"{sum(inside)} of {len(inside)} inside their 90 % interval")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leave-one-device-out", action="store_true", help="validate on every device of the data")
    # the name `make bench-projection-error` still passes
    parser.add_argument("--all-devices", dest="leave_one_device_out", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fit-demo", metavar="DEVICE", help="fit a profile from a benchncnn run of DEVICE held out")
    parser.add_argument("--keep-disturbed", action="store_true", help="keep the disturbed published runs")
    parser.add_argument("--profiles-dir", type=Path, action="append", default=[], help="extra profiles folder")
    args = parser.parse_args()
    data = load_calibration_data(keep_disturbed=args.keep_disturbed)
    if args.leave_one_device_out:
        leave_one_device_out(data)
    if args.fit_demo:
        fit_demo(data, args.fit_demo)
    if not args.leave_one_device_out and not args.fit_demo:
        profile_table(args.profiles_dir)


if __name__ == "__main__":
    main()
