"""`mobile-export explain`: which layer of an artifact departs from the ONNX reference, and by how much."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from exporter.cli.guard import EXIT_OK, guarded

LAYER_NAME_WIDTH = 44
ARTIFACT_OP_WIDTH = 24


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--artifact", "artifact_key", default="int8", show_default=True,
              help="int8, fp16, fp32 (the TFLite artifact of that precision) or an artifact's file name "
                   "(.tflite, .ncnn.param, .mlpackage)")
@click.option("--json", "as_json", is_flag=True, help="print the findings as JSON instead of a table")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path),
              help="where to write the PNG plot (default MODEL_DIR/<artifact>.explain.png)")
@click.option("--samples", default=20, show_default=True, help="how many validation samples to run")
@click.option("--calib", help="the export's --calib photos, when they moved since the export")
@click.option("--val", help="photos (folder or .npy) to compare on instead of the export's validation photos")
@click.option("--debug", is_flag=True, help="show Python tracebacks")
def explain(model_dir: Path, artifact_key: str, as_json: bool, plot_path: Path | None, samples: int,
            calib: str | None, val: str | None, debug: bool) -> None:
    """Compare an artifact's inner tensors with the ONNX model's, layer by layer, and say where the error enters.

    Saves the findings as MODEL_DIR/<artifact>.explain.json (the HTML report shows them) and a plot."""

    def run() -> int:
        from core.manifest import read_manifest
        from exporter.datasets import explain_samples
        from validation.explain import explain_artifact, explain_json_path, find_artifact, save_report
        from validation.plots import layer_error_png

        manifest = read_manifest(model_dir)
        entry = find_artifact(manifest, artifact_key)
        validation = explain_samples(manifest.data, manifest.contract(), calib, val)
        report = explain_artifact(manifest, entry, validation, max_samples=samples)
        json_path = explain_json_path(model_dir, report.artifact)
        save_report(report, json_path)
        png_path = plot_path or json_path.with_suffix(".png")
        png_path.write_bytes(layer_error_png(report.to_json()))
        if as_json:
            click.echo(json.dumps(report.to_json(), indent=2))
        else:
            for line in table_lines(report):
                click.echo(line)
            click.echo(f"saved: {json_path} and the plot {png_path}")
        return EXIT_OK

    sys.exit(guarded(run, debug))


def table_lines(report) -> list[str]:
    lines = [
        f"{report.artifact} ({report.runtime} {report.precision}) against {report.reference}, "
        f"on {report.samples} validation samples",
        f"   {'#':>3}  {'ONNX layer':<{LAYER_NAME_WIDTH}} {'op':<17} {'artifact op':<{ARTIFACT_OP_WIDTH}} "
        f"{'shape':<15} "
        f"{'cosine':>8} {'rel.err':>8} {'added':>8} {'growth':>7} {'w.err':>7}",
    ]
    for layer in report.layers:
        mark = ">>" if layer.depth == report.jump_depth else "  "
        growth = "-" if layer.growth is None else f"x{layer.growth:.2f}"
        weight = "-" if layer.weight_relative_error is None else f"{layer.weight_relative_error:.3f}"
        lines.append(
            f"{mark} {layer.depth:>3}  {_short(layer.onnx_layer, LAYER_NAME_WIDTH):<{LAYER_NAME_WIDTH}} "
            f"{layer.onnx_op:<17} {_short(layer.artifact_op, ARTIFACT_OP_WIDTH):<{ARTIFACT_OP_WIDTH}} "
            f"{'x'.join(map(str, layer.shape)):<15} {layer.cosine:>8.5f} "
            f"{layer.relative_error:>8.4f} {layer.increase:>+8.4f} {growth:>7} {weight:>7}"
        )
    jump = report.jump
    if jump is None:
        lines.append("no layer adds a relative error of 0.001: the artifact follows the reference within float "
                     "rounding everywhere it was compared")
    else:
        lines.append(
            f"error enters at layer {jump.depth}: {jump.onnx_layer} ({jump.onnx_op}, {jump.artifact_op} in the "
            f"artifact): relative error {jump.input_relative_error:.4f} at its input -> {jump.relative_error:.4f}"
        )
    if len(report.outputs) > 1:
        for output in report.outputs:
            lines.append(_output_line(report, output))
    lines.append(f"marked (>>): {report.rule}")
    lines.append("columns: rel.err = |artifact - onnx| / |onnx| over all samples; added = rel.err - its input's; "
                 "growth = rel.err / its input's; w.err = the same for the layer's weights")
    for item in report.unmatched:
        lines.append(f"not compared: {item}")
    for note in report.notes:
        lines.append(f"note: {note}")
    return lines


def _output_line(report, output) -> str:
    if output.layer is None:
        return f"output {output.output}: no compared layer above it"
    where = ("no layer above it adds 0.001" if output.jump_depth is None else
             f"its error enters at layer {output.jump_depth} ({report.layers[output.jump_depth].onnx_layer})")
    return f"output {output.output}: relative error {output.relative_error:.4f} (layer {output.layer}); {where}"


def _short(name: str, width: int) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
