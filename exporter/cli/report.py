"""`mobile-export report`: the HTML/Markdown report and the bundle.zip for app teams, from an export folder."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from exporter.cli.guard import EXIT_OK, guarded


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--debug", is_flag=True, help="show Python tracebacks")
def report(model_dir: Path, debug: bool) -> None:
    """Write MODEL_DIR/report.html, report.md and bundle.zip (artifacts, labels, contract, snippets)."""
    from exporter.bundle import write_report_and_bundle

    def run() -> int:
        for path in write_report_and_bundle(model_dir):
            click.echo(f"wrote {path}")
        return EXIT_OK

    sys.exit(guarded(run, debug))
