"""The FPS projection's error: leave-one-model-out median absolute percentage error per device profile.

Usage: .venv/bin/python bench/projection_error.py [--all-devices] [--profiles-dir DIR] [--per-model PROFILE]

For each profile: the cost model's LOMO error over all held-out benchncnn networks, the same over the float and
the int8 networks alone, and the MACs-only baseline's LOMO error, fitted and evaluated identically.
--all-devices adds one row per published CPU configuration (device, threads, powersave) of all 82 devices.
--per-model PROFILE prints each held-out network's measured and projected latency for one profile.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from validation.profiles import load_profiles  # noqa: E402
from validation.projection import DeviceFit, calibration_latencies, fit_device  # noqa: E402

HEADER = f"{'':<52} {'runs':>4} {'model':>7} {'float':>7} {'int8':>7} {'MACs':>7}"


def error_cells(fit: DeviceFit) -> str:
    cells = (fit.lomo_mape, fit.lomo_mape_of(int8=False), fit.lomo_mape_of(int8=True), fit.baseline_mape)
    return f"{len(fit.models):>4} " + " ".join(f"{'-':>7}" if math.isnan(c) else f"{c:>6.1f}%" for c in cells)


def profile_table(profile_dirs: list[Path]) -> None:
    print("Per profile (LOMO median absolute percentage error; 'MACs' = latency proportional to multiply-adds)")
    print(HEADER)
    for profile in load_profiles(profile_dirs).values():
        calibration = profile.calibration
        if calibration is None:
            print(f"{profile.name:<52} no calibration")
            continue
        fit = fit_device(calibration.device, calibration.threads, calibration.powersave)
        proxy = f" (proxy x{calibration.scale:g})" if calibration.is_proxy else ""
        label = f"{profile.name}{proxy}, calibrated at {calibration.threads} thr"
        print(f"{label:<52} {error_cells(fit)}")


def all_devices_table() -> None:
    print("\nEvery published CPU configuration (device, threads, powersave)")
    print(HEADER)
    fits = [fit_device(*key) for key in sorted(calibration_latencies())]
    for fit in fits:
        label = f"{fit.device[:40]} {fit.threads}t ps{fit.powersave}"
        print(f"{label:<52} {error_cells(fit)}")
    model, baseline = [f.lomo_mape for f in fits], [f.baseline_mape for f in fits]
    print(f"\n{len(fits)} configurations: median of LOMO errors {statistics.median(model):.1f}% "
          f"(MACs baseline {statistics.median(baseline):.1f}%); cost model better than the baseline on "
          f"{sum(m < b for m, b in zip(model, baseline))}; below 25% on {sum(m < 25 for m in model)}")


def per_model_table(profile_name: str, profile_dirs: list[Path]) -> None:
    calibration = load_profiles(profile_dirs)[profile_name].calibration
    fit = fit_device(calibration.device, calibration.threads, calibration.powersave)
    measured = calibration_latencies()[(fit.device, fit.threads, fit.powersave)]
    print(f"\n{profile_name}: each network projected by a fit without it ({fit.device}, {fit.threads} threads)")
    print(f"{'network':<22} {'measured ms':>12} {'projected ms':>13} {'error':>7} {'MACs error':>11}")
    for model, error, baseline in zip(fit.models, fit.held_out_errors, fit.baseline_held_out_errors):
        ms = measured[model]
        print(f"{model:<22} {ms:>12.2f} {ms * (1 + error):>13.2f} {error * 100:>+6.0f}% {baseline * 100:>+10.0f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--all-devices", action="store_true", help="also every published CPU configuration")
    parser.add_argument("--profiles-dir", type=Path, action="append", default=[], help="extra profiles folder")
    parser.add_argument("--per-model", metavar="PROFILE", help="held-out predictions of one profile")
    args = parser.parse_args()
    profile_table(args.profiles_dir)
    if args.per_model:
        per_model_table(args.per_model, args.profiles_dir)
    if args.all_devices:
        all_devices_table()


if __name__ == "__main__":
    main()
