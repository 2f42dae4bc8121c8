"""`mobile-export profiles`: the device profiles, what each is calibrated on and how well the projection fits it."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from exporter.cli.guard import guarded


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON list instead of a table")
@click.option("--profiles-dir", "profile_dirs", multiple=True, type=click.Path(path_type=Path),
              help="extra folder of <device>.toml profiles (repeatable); same names override built-in ones")
@click.option("--debug", is_flag=True, help="show Python tracebacks")
def profiles(as_json: bool, profile_dirs: tuple[Path, ...], debug: bool) -> None:
    """List the device profiles with their cores, threads, runtimes, FPS target and calibration error."""

    def run() -> int:
        rows = [_row(profile) for profile in _load(profile_dirs)]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return 0
        click.echo(f"{'profile':<20} {'device':<26} {'cores (GHz)':<44} {'thr':>3} {'runtimes':<26} {'FPS':>4} "
                   f"{'calibration':<14} {'LOMO':>5} {'MACs':>5}")
        for row in rows:
            click.echo(_table_line(row))
        click.echo("LOMO: leave-one-model-out median error of the projection's cost model on the calibration runs; "
                   "MACs: the same for latency proportional to multiply-adds.")
        return 0

    sys.exit(guarded(run, debug))


def _load(profile_dirs: tuple[Path, ...]):
    from validation.profiles import load_profiles

    return load_profiles(profile_dirs).values()


def _row(profile) -> dict:
    from validation.projection import fit_device

    row = profile.as_dict()
    calibration = profile.calibration
    if calibration is not None:
        fit = fit_device(calibration.device, calibration.threads, calibration.powersave)
        row["calibration"].update(runs=len(fit.models), lomo_mape_percent=round(fit.lomo_mape, 1),
                                  baseline_mape_percent=round(fit.baseline_mape, 1))
    return row


def _table_line(row: dict) -> str:
    cores = " + ".join(f"{c['count']}x{c['core'].removeprefix('Cortex-')}@{c['ghz']:g}" for c in row["cores"])
    calibration = row["calibration"]
    if calibration is None:
        how, lomo, baseline = "none", "-", "-"
    else:
        how = "proxy" if calibration["proxy"] else "own runs"
        lomo, baseline = f"{calibration['lomo_mape_percent']:.0f}%", f"{calibration['baseline_mape_percent']:.0f}%"
    return (f"{row['name']:<20} {row['display_name'][:26]:<26} {cores[:44]:<44} {row['threads']:>3} "
            f"{','.join(row['runtimes']):<26} {row['target_fps']:>4g} {how:<14} {lomo:>5} {baseline:>5}")
