"""`mobile-export bench OUT/<model>`: frame rate per device profile, measured on the host, projected for
devices, measured on a plugged-in device with --device; gated at each profile's target FPS."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from exporter.cli.guard import guarded
from exporter.config import TARGET_GROUPS
from targets import interchange_target


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--profile", "profile_names",
              help="device profile(s) to gate, comma-separated; 'all' for every profile; 'host' gates this machine "
                   "(default: every profile that runs one of the exported runtimes)")
@click.option("--target", type=click.Choice(list(TARGET_GROUPS)),
              help="only the artifacts of this target group (default: every artifact in the folder)")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON instead of a table")
@click.option("--host/--no-host", default=True, help="time every artifact on this machine (default: yes)")
@click.option("--threads", type=click.IntRange(min=1),
              help="threads for every runtime (default: this host's cores up to 4; on a device: 4)")
@click.option("--budget", "budget_s", type=click.FloatRange(min=0.1), default=20.0, show_default=True,
              help="most seconds of timed runs per artifact on the host")
@click.option("--profiles-dir", "profile_dirs", multiple=True, type=click.Path(path_type=Path),
              help="extra folder of <device>.toml profiles (repeatable)")
@click.option("--device", "device_spec", help="adb:SERIAL - also run on this plugged-in Android device")
@click.option("--benchmark-binary", "benchmark_binaries", multiple=True, type=click.Path(path_type=Path),
              help="the device build of LiteRT's benchmark_model or ncnn's benchncnn (repeatable; with --device)")
@click.option("--device-profile", "device_profile_name",
              help="the profile whose device --device is: its measured rows replace that profile's projections")
@click.option("--interval-level", type=click.Choice(["0.8", "0.9", "0.95", "0.98"]), default="0.9", show_default=True,
              help="level of the projected rows' intervals; a projected row passes only when the slow end "
                   "meets the target")
@click.option("--debug", is_flag=True, help="show Python tracebacks")
def bench(model_dir: Path, profile_names: str | None, target: str | None, as_json: bool, host: bool,
          threads: int | None, budget_s: float, profile_dirs: tuple[Path, ...], device_spec: str | None,
          benchmark_binaries: tuple[Path, ...], device_profile_name: str | None, interval_level: str,
          debug: bool) -> None:
    """Frame rate of every artifact per device profile, measured or projected, gated at the target FPS."""

    def run() -> int:
        from core.errors import InputError
        from exporter.progress import StageClock
        from validation.device_run import parse_device_spec
        from validation.fps_gate import (
            BenchPlan,
            check_gate,
            load_export,
            run_bench,
            select_profiles,
            table_lines,
            write_report,
        )
        from validation.host_bench import StoppingRule, default_threads
        from validation.profiles import load_profiles

        if benchmark_binaries and device_spec is None:
            raise InputError("--benchmark-binary runs on a device: --device adb:SERIAL is missing",
                             hint="add --device adb:SERIAL (see `adb devices`)")
        if device_profile_name is not None and device_spec is None:
            raise InputError("--device-profile names the profile of the device to measure: "
                             "--device adb:SERIAL is missing",
                             hint="add --device adb:SERIAL (see `adb devices`)")
        runtimes = None if target is None else (interchange_target().name, *TARGET_GROUPS[target][1])
        model = load_export(model_dir, runtimes)
        all_profiles = load_profiles(profile_dirs)
        if device_profile_name is not None and device_profile_name not in all_profiles:
            raise InputError(f"--device-profile {device_profile_name}: no such profile",
                             hint=f"choose from: {', '.join(all_profiles)} (mobile-export profiles lists them)")
        selection = select_profiles(profile_names, all_profiles, model)
        if selection.gate_host and not host:
            raise InputError("--profile host asks to gate this machine, and --no-host skips it",
                             hint="drop one of the two")
        plan = BenchPlan(
            selection=selection, measure_host=host, host_threads=threads or default_threads(),
            rule=StoppingRule(budget_seconds=budget_s),
            device_serial=None if device_spec is None else parse_device_spec(device_spec),
            benchmark_binaries=benchmark_binaries, device_threads=threads or 4,
            device_profile=None if device_profile_name is None else all_profiles[device_profile_name],
            interval_level=float(interval_level),
        )
        report = run_bench(model, plan, StageClock(lambda line: click.echo(line, err=True)).stage)
        written = write_report(report, model.folder)
        if as_json:
            click.echo(json.dumps(report.as_dict(), indent=2))
        else:
            for line in table_lines(report):
                click.echo(line)
            click.echo(f"written: {written}")
        check_gate(report)
        return 0

    sys.exit(guarded(run, debug))
