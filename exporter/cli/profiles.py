"""`mobile-export profiles`: the device profiles, what each is calibrated on and how well its projection holds
up held out; `mobile-export profiles fit`: a profile from one benchncnn run on the user's own device."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from exporter.cli.guard import guarded
from targets import profile_runtimes

BENCHNCNN = "benchncnn"  # the tool whose printed output `profiles fit` reads


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

    sys.exit(guarded(run, debug))


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


@profiles.command()
@click.argument("results", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="the profile's name (its file is NAME.toml; `--profile NAME` picks it)")
@click.option("--display-name", help="the device's name in tables (default: NAME)")
@click.option("--soc", default="", help="the device's SoC, for the listing")
@click.option("--threads", type=click.IntRange(min=1),
              help="threads the run used (default: num_threads from the output's header)")
@click.option("--powersave", type=click.IntRange(0, 2),
              help="benchncnn powersave of the run (default: from the header)")
@click.option("--target-fps", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="the frame rate the gate asks of this device")
@click.option("--runtime", "runtimes", multiple=True, type=click.Choice(list(profile_runtimes())),
              help="runtimes the device runs (repeatable; default: the runtime benchncnn measured)")
@click.option("--out-dir", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="folder to write NAME.toml into (pass it to --profiles-dir)")
@click.option("--hold-out-device", "hold_out_devices", multiple=True,
              help="a device string of the data to leave out of the fit and its validation (to check the fit on a "
                   "device whose other runs are known; repeatable)")
@click.option("--debug", is_flag=True, help="show Python tracebacks")
def fit(results: Path, name: str, display_name: str | None, soc: str, threads: int | None, powersave: int | None,
        target_fps: float, runtimes: tuple[str, ...], out_dir: Path, hold_out_devices: tuple[str, ...],
        debug: bool) -> None:
    """Write a calibrated profile from RESULTS, the text benchncnn printed on your device (CPU, a handful of its
    networks or all of them). Validating the fit leaves each device of the data out in turn: about a minute."""
    def run() -> int:
        from core.errors import InputError
        from validation.calibration_data import load_calibration_data
        from validation.projection_fit import FitRequest, fit_profile, parse_benchncnn_runs, summary_lines

        if not results.is_file():
            raise InputError(f"benchmark output {results} does not exist",
                             hint="save what benchncnn printed on the device, e.g. `adb shell ... benchncnn 8 4 0 -1 1 "
                                  "> RESULTS.txt`, and pass that file")
        if not _is_profile_name(name):
            raise InputError(f"--name {name!r} cannot be a profile file name",
                             hint="use letters, digits, '-' and '_' (e.g. my-phone)")
        run_output = parse_benchncnn_runs(results.read_text(encoding="utf-8", errors="replace"),
                                          load_calibration_data().networks)
        if run_output.gpu_device not in (None, -1):
            raise InputError(f"{results} is a GPU run (gpu_device = {run_output.gpu_device}); "
                             "the projection is for the CPU",
                             hint="run benchncnn with gpu_device -1 (its fourth argument)")
        chosen_threads = threads or run_output.threads
        if chosen_threads is None:
            raise InputError(f"{results} does not say how many threads the run used (no 'num_threads = N' line)",
                             hint="pass --threads N, the second argument you gave benchncnn")
        for line in _run_notes(run_output):
            click.echo(line, err=True)
        request = FitRequest(
            name=name, display_name=display_name or name, source=f"benchncnn output {results.name}",
            threads=chosen_threads, powersave=powersave if powersave is not None else (run_output.powersave or 0),
            target_fps=target_fps, runtimes=runtimes or (_benchncnn_runtime(),), soc=soc,
            hold_out_devices=hold_out_devices)
        fitted = fit_profile(run_output, request, progress=_progress)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{name}.toml"
        path.write_text(fitted.toml, encoding="utf-8")
        _check_loads(path)
        for line in summary_lines(fitted, request):
            click.echo(line)
        click.echo(f"written: {path}  (use it with --profiles-dir {out_dir} --profile {name})")
        return 0

    sys.exit(guarded(run, debug))


def _benchncnn_runtime() -> str:
    """The runtime library whose own benchmark tool printed the run: the one a profile fitted from it runs."""
    from targets import REGISTRY

    return next(t.profile_runtime for t in REGISTRY.values() if t.benchmark_binary == BENCHNCNN)


def _is_profile_name(name: str) -> bool:
    return bool(name) and all(ch.isalnum() or ch in "-_" for ch in name)


def _run_notes(run_output) -> list[str]:
    from validation.calibration_data import DISTURBED_MEAN_OVER_MIN

    notes = []
    if run_output.unknown:
        notes.append(f"not used: {', '.join(run_output.unknown)} (no network of the calibration data)")
    if run_output.disturbed:
        notes.append(f"set aside as disturbed (mean more than {DISTURBED_MEAN_OVER_MIN} x the fastest loop): "
                     f"{', '.join(run_output.disturbed)}; "
                     "rerun them on an idle, cool device to use them")
    return notes


def _progress(done: int, total: int) -> None:
    if done % 12 == 0 or done == total:
        click.echo(f"validating the fit: {done}/{total} devices of the data left out", err=True)


def _check_loads(path: Path) -> None:
    """What we write must be what the loader reads: fail here, not at the next bench."""
    from validation.profiles import load_profile

    load_profile(path)
