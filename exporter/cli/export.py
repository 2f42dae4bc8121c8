"""`mobile-export export` and `mobile-export models`."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from core.errors import GateFailed, MobileExportError, most_severe
from exporter.cli.guard import EXIT_OK, echo_err, guarded, terminate_like_ctrl_c
from exporter.config import DEFAULT_TARGET, TARGET_GROUPS


@click.command()
@click.option("--model", help="zoo:NAME, python:pkg.module:factory, model.pt (TorchScript), model.pt2, model.onnx")
@click.option("--weights", help="state_dict to load: .pt/.pth (tensors only) or .safetensors")
@click.option("--trust-pickle", is_flag=True, default=None, help="allow loading pickled Python objects (runs code!)")
@click.option("--input-shape", help="N,C,H,W, e.g. 1,3,224,224")
@click.option("--mean", help="per-channel mean after pixel scaling, e.g. 0.485,0.456,0.406")
@click.option("--std", help="per-channel std after pixel scaling, e.g. 0.229,0.224,0.225")
@click.option("--color", type=click.Choice(["rgb", "bgr"]), help="channel order the model expects")
@click.option("--pixel-scale", type=float, help="pixels are divided by this before mean/std (default 255)")
@click.option("--calib", help="folder of photos or .npy for int8 calibration (default: built-in sample photos)")
@click.option("--val", help="folder of photos or .npy for parity (default: held-out part of --calib)")
@click.option("--labels", help="text file with one class name per output, in order")
@click.option("--target", type=click.Choice(list(TARGET_GROUPS)), help=f"what to build (default {DEFAULT_TARGET})")
@click.option("--out", help="output folder (default out); artifacts go to OUT/<model>/")
@click.option("--int8-io", is_flag=True, default=None, help="int8 input/output tensors for int8 artifacts")
@click.option("--pure-int8", is_flag=True, default=None,
              help="never keep int8 layers in float to pass the gate (for NPU/DSP delegates that run integer graphs only)")
@click.option("--coreml-palettize", is_flag=True, default=None, help="also build a 6-bit palettized Core ML package")
@click.option("--coreml-w8a8", is_flag=True, default=None,
              help="also build a Core ML package with int8 weights and 8-bit activations (iOS 17+)")
@click.option("--rebuild", is_flag=True, default=None,
              help="convert again even if nothing changed since the last export, and remove what earlier exports "
                   "left in OUT/<model> that cannot be kept (another model's artifacts, edited files)")
@click.option("--timeout", "timeout_s", type=float, help="seconds each converter may take (default 1800)")
@click.option("--config", "config_path", type=click.Path(path_type=Path), help="export.toml; flags override it")
@click.option("--keep-going", is_flag=True, help="when a target fails, still publish the others (exit code stays non-zero)")
@click.option("--debug", is_flag=True, help="show Python tracebacks")
def export(config_path: Path | None, debug: bool, keep_going: bool, **flags) -> None:
    """Convert a model to mobile artifacts and prove each one matches the original."""
    from exporter.config import build_spec, parse_number_list

    def run() -> int:
        if flags["input_shape"] is not None:
            flags["input_shape"] = parse_number_list(flags["input_shape"], "--input-shape", int)
        for key in ("mean", "std"):
            if flags[key] is not None:
                flags[key] = parse_number_list(flags[key], f"--{key}")
        spec = build_spec(flags, config_path)
        return _export(spec, keep_going)

    with terminate_like_ctrl_c():
        sys.exit(guarded(run, debug))


@click.command()
@click.option("--json", "as_json", is_flag=True, help="print a JSON list instead of a table")
def models(as_json: bool) -> None:
    """List the zoo models with parameters, MACs, input size, final feature map and receptive field."""
    import json

    from exporter.model_stats import model_stats
    from exporter.zoo import ZOO

    rows = []
    for entry in ZOO.values():
        stats = model_stats(entry.build(), entry.input_shape)
        rows.append({"name": entry.name, "task": entry.task, "pretrained": entry.pretrained_weights is not None,
                     **stats.as_dict()})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'model':<24} {'params':>8} {'MACs':>8} {'input':>9} {'final map':>14} {'RF':>5} {'stride':>6}")
    for row in rows:
        final_map = "x".join(str(v) for v in row["final_feature_map"] or ()) or "-"
        size = "x".join(str(v) for v in row["input_shape"][2:])
        click.echo(
            f"{row['name']:<24} {row['params'] / 1e6:>7.2f}M {row['macs'] / 1e6:>7.1f}M {size:>9} {final_map:>14} "
            f"{row['receptive_field'] or '-':>5} {row['output_stride'] or '-':>6}"
        )


def _export(spec, keep_going: bool = False) -> int:
    from exporter.pipeline import run_export
    from exporter.progress import StageClock
    from validation.report import summary_lines

    report = run_export(spec, StageClock(echo_err), keep_going=keep_going)
    for line in summary_lines(report):
        click.echo(line)
    if report.failures:
        raise _failed_targets_error(report)
    if not report.passed:
        failed = "; ".join(
            f"{r.artifact.runtime} {r.artifact.precision} ({', '.join(r.parity.failures)})" for r in report.failed
        )
        raise GateFailed(
            f"parity gate failed for {len(report.failed)} artifact(s): {failed}",
            hint="inspect the failed artifacts, give more or better --calib photos, or relax [parity] in export.toml",
        )
    return EXIT_OK


def _failed_targets_error(report) -> MobileExportError:
    names = ", ".join(failure.target for failure in report.failures)
    details = "\n".join(f"  {failure.target}: {failure.error.message}" for failure in report.failures)
    gates = f"; {len(report.failed)} published artifact(s) failed their parity gate" if report.failed else ""
    summary = (f"{len(report.failures)} target(s) failed ({names}); the other artifacts were published and "
               f"the manifest lists the failures{gates}:\n{details}")
    return most_severe([failure.error for failure in report.failures], summary)
