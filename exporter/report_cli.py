"""`mobile-export report`: the HTML/Markdown report and the bundle.zip for app teams, from an export folder."""
from __future__ import annotations

import sys
from pathlib import Path

import click


def write_report_and_bundle(model_dir: Path) -> tuple[Path, Path, Path]:
    """report.html, report.md and bundle.zip (which includes the report) for an export folder."""
    from exporter.bundle import write_bundle
    from validation.html_report import write_reports

    html_path, md_path = write_reports(model_dir)
    return html_path, md_path, write_bundle(model_dir)


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--debug", is_flag=True, help="show Python tracebacks")
def report(model_dir: Path, debug: bool) -> None:
    """Write MODEL_DIR/report.html, report.md and bundle.zip (artifacts, labels, contract, snippets)."""
    from exporter.cli import EXIT_OK, _guarded

    def run() -> int:
        for path in write_report_and_bundle(model_dir):
            click.echo(f"wrote {path}")
        return EXIT_OK

    sys.exit(_guarded(run, debug))
