"""`mobile-export profiles`: the device profiles, what each is calibrated on and how well its projection holds
up held out."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="print a JSON list instead of a table")
@click.option("--profiles-dir", "profile_dirs", multiple=True, type=click.Path(path_type=Path),
              help="extra folder of <device>.toml profiles (repeatable); same names override built-in ones")
@click.option("--debug", is_flag=True, help="show Python tracebacks")
@click.pass_context
def profiles(context: click.Context, as_json: bool, profile_dirs: tuple[Path, ...], debug: bool) -> None:
    """List the device profiles with their cores, threads, runtimes, FPS target and held-out projection error."""
    if context.invoked_subcommand is not None:
        return
    from exporter.cli import _guarded

    def run() -> int:
        rows = [_row(profile) for profile in _load(profile_dirs)]
        if as_json:
            click.echo(json.dumps(rows, indent=2))
            return 0
        click.echo(f"{'profile':<20} {'device':<26} {'cores (GHz)':<40} {'thr':>3} {'runtimes':<26} {'FPS':>4} "
                   f"{'calibration':<14} {'error':>6} {'90 % interval':>14}")
        for row in rows:
            click.echo(_table_line(row))
        click.echo("error, interval: held-out median error and 90 % interval (measured / projected) of projections "
                   "like this profile's, float networks at its thread count (bench/projection_error.py)")
        return 0

    sys.exit(_guarded(run, debug))


def _load(profile_dirs: tuple[Path, ...]):
    from validation.profiles import load_profiles

    return load_profiles(profile_dirs).values()


def _row(profile) -> dict:
    from validation.projection import calibrated_device
    from validation.projection_validation import thread_bucket

    row = profile.as_dict()
    calibration = profile.calibration
    if calibration is not None:
        device = calibrated_device(calibration, profile.display_name, profile.threads)
        error = device.error_for(f"float, {thread_bucket(device.threads)}")
        low, high = error.ratio_interval()
        row["calibration"].update(held_out_median_error_percent=round(error.median_abs_error_percent, 1),
                                  held_out_interval=[round(low, 3), round(high, 3)], held_out_pairs=error.pairs,
                                  validation=device.validation)
    return row


def _table_line(row: dict) -> str:
    cores = " + ".join(f"{c['count']}x{c['core'].removeprefix('Cortex-')}@{c['ghz']:g}" for c in row["cores"]) or "-"
    calibration = row["calibration"]
    if calibration is None:
        how, error, interval = "none", "-", "-"
    else:
        how = calibration["kind"]
        error = f"{calibration['held_out_median_error_percent']:.0f}%"
        interval = "x{:.2f}-x{:.2f}".format(*calibration["held_out_interval"])
    return (f"{row['name']:<20} {row['display_name'][:26]:<26} {cores[:40]:<40} {row['threads']:>3} "
            f"{','.join(row['runtimes']):<26} {row['target_fps']:>4g} {how:<14} {error:>6} {interval:>14}")
