"""The `mobile-export` command: one group, one module per command. The only place that prints results and
turns errors into exit codes (guard.py)."""
from __future__ import annotations

import click

from exporter.cli.bench import bench
from exporter.cli.explain import explain
from exporter.cli.export import export, models
from exporter.cli.profiles import profiles
from exporter.cli.report import report


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Export trained lightweight CNNs to mobile runtimes, with parity proof."""


for command in (export, models, bench, profiles, explain, report):
    main.add_command(command)
