"""The report for app teams: OUT/<model>/report.html (self-contained) and its Markdown twin report.md.

Everything comes from files in the model folder: manifest.json (parity, sizes, op counts, the input
contract), bench.json when `mobile-export bench` has run (FPS per profile), and the *.explain.json files
`mobile-export explain` saves (error per layer). Both documents are built from the same sections: each section
is a title, paragraphs, tables and plots, rendered once as HTML and once as Markdown.
"""
from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from core.manifest import conversion_of, read_manifest
from core.output_kinds import GATED_FIGURE
from validation.fps_gate import BENCH_NAME

REPORT_HTML, REPORT_MD = "report.html", "report.md"
PLOTS_FOLDER = "report_plots"  # the Markdown twin links its plots from here
EXPLAIN_SUFFIX = ".explain.json"
NO_BENCH = "no FPS measurement yet: run mobile-export bench"
MAX_LISTED_CHANGES = 8  # top-1 changes named per artifact in the parity section; the manifest has all
KEPT = "kept from an earlier export"
KEY_SHOWN = 12  # hex digits of an artifact's reuse key in the parity table; the manifest has all 64
NO_EXPLAIN = ("no per-layer error yet: run mobile-export explain OUT/<model> --artifact int8 to see where an "
              "artifact's error enters")


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    css_class: str = ""


@dataclass(frozen=True)
class Plot:
    file_name: str  # in PLOTS_FOLDER, for the Markdown twin
    png: bytes
    caption: str


@dataclass(frozen=True)
class Section:
    title: str
    paragraphs: tuple[str, ...] = ()
    tables: tuple[Table, ...] = ()
    plots: tuple[Plot, ...] = ()


@dataclass(frozen=True)
class ReportInputs:
    manifest: dict
    bench: dict | None
    explains: tuple[dict, ...] = field(default_factory=tuple)


def read_inputs(model_dir: Path) -> ReportInputs:
    manifest = read_manifest(model_dir).raw  # checked by the one reader; the report renders all of it
    bench_path = model_dir / BENCH_NAME
    bench = json.loads(bench_path.read_text(encoding="utf-8")) if bench_path.is_file() else None
    explains = tuple(json.loads(path.read_text(encoding="utf-8"))
                     for path in sorted(model_dir.glob(f"*{EXPLAIN_SUFFIX}")))
    return ReportInputs(manifest, bench, explains)


def write_reports(model_dir: Path) -> tuple[Path, Path]:
    """Writes report.html and report.md (with its plots in report_plots/); returns both paths."""
    inputs = read_inputs(model_dir)
    sections = build_sections(inputs)
    title = f"mobile-export report: {inputs.manifest['model']['name']}"
    plots = model_dir / PLOTS_FOLDER
    plots.mkdir(exist_ok=True)
    for section in sections:
        for plot in section.plots:
            (plots / plot.file_name).write_bytes(plot.png)
    html_path, md_path = model_dir / REPORT_HTML, model_dir / REPORT_MD
    html_path.write_text(render_html(title, sections), encoding="utf-8")
    md_path.write_text(render_markdown(title, sections), encoding="utf-8")
    return html_path, md_path


def build_sections(inputs: ReportInputs) -> list[Section]:
    manifest = inputs.manifest
    return [
        _summary_section(manifest),
        _parity_section(manifest),
        _fps_section(inputs.bench),
        _contract_section(manifest),
        _ops_section(manifest),
        _layer_error_section(inputs.explains),
        _tools_section(manifest),
    ]


def _summary_section(manifest: dict) -> Section:
    model, data = manifest["model"], manifest.get("data", {})
    failed = [failure["target"] for failure in manifest.get("failed_targets") or ()]
    if manifest.get("gates_passed"):
        verdict = "every artifact passed its parity gate"
    elif failed:
        verdict = f"target(s) {', '.join(failed)} FAILED to export (the manifest's failed_targets says why)"
    else:
        verdict = "at least one artifact FAILED its parity gate (see the parity table)"
    kept = [Path(a["path"]).name for a in manifest["artifacts"] if _kept(a)]
    kept_note = (f"Kept from an earlier export of other targets, their parity measured again by the latest one: "
                 f"{', '.join(kept)}.",) if kept else ()
    return Section("Summary", (
        f"Model {model['name']} from {model['source']}: {len(manifest['artifacts'])} artifacts; {verdict}.",
        f"Parity reference: {manifest.get('parity_reference', 'unknown')}, on {data.get('validation_samples', '?')} "
        f"validation samples ({data.get('validation_source', '?')}); int8 calibrated on "
        f"{data.get('calibration_samples', '?')} samples from {data.get('calibration_source', '?')}.",
        *kept_note,
    ))


def _parity_section(manifest: dict) -> Section:
    rows = []
    for artifact in manifest["artifacts"]:
        parity = artifact["parity"]
        rows.append((
            Path(artifact["path"]).name, artifact["runtime"], artifact["precision"], artifact["target"],
            f"{artifact.get('total_bytes', artifact['bytes']) / 1e6:.2f} MB", f"{parity['cosine']:.6f}",
            f"{parity['cosine_min']:.6f}", _top1_text(parity),
            _number(parity.get("top5_overlap"), 3), f"{parity['max_abs']:.2e}",
            _gate_text(parity["thresholds"], parity.get("kind", "logits")),
            _conversion_text(artifact), "pass" if parity["passed"] else "FAIL: " + "; ".join(parity["failures"]),
        ))
        for name, each in (parity.get("per_output") or {}).items():  # several outputs: each judged on its own
            rows.append((
                f"{Path(artifact['path']).name} · output {name} ({each.get('kind') or 'tensor'})", artifact["runtime"],
                artifact["precision"], artifact["target"], "", f"{each['cosine']:.6f}", f"{each['cosine_min']:.6f}",
                _top1_text(each) if each.get("top1_agreement") is not None else _metrics_text(each),
                _number(each.get("top5_overlap"), 3), f"{each['max_abs']:.2e}",
                _gate_text(each["thresholds"], each.get("kind")), "",
                "pass" if each["passed"] else "FAIL: " + "; ".join(each["failures"]),
            ))
    header = ("artifact", "runtime", "precision", "platform", "size", "cosine", "min cosine",
              "top-1 agreement (95 % interval)",
              "top-5 overlap", "max |Δ|", "gate", "made (reuse key)", "verdict")
    return Section("Parity against the reference", (
        "Each artifact ran in its own runtime on the validation photos and was compared with the reference; "
        "cosine is the mean over samples. Every artifact's parity was measured by the latest export, kept and "
        "reused ones included. A model with several outputs has a row per output under each artifact's row, which "
        "gives the worst output's figures.", *_top1_change_notes(manifest), *_float_fallback_notes(manifest)),
        (Table(header, tuple(rows), "parity"),))


def _kept(artifact: dict) -> bool:
    conversion = conversion_of(artifact.get("details", {}))
    return conversion is not None and conversion.kept


def _conversion_text(artifact: dict) -> str:
    """Who made the artifact, and the reuse key it was made under: a later export reuses it while that holds."""
    conversion = conversion_of(artifact.get("details", {}))
    if conversion is None:
        return "exported"
    made = KEPT if conversion.kept else "reused" if conversion.reused else "converted"
    return f"{made} ({conversion.key[:KEY_SHOWN]})"


def _top1_text(parity: dict) -> str:
    """0.960 (0.865-0.989): a top-1 agreement measured on tens of samples is an estimate, and its interval
    says how far the next photos may take it."""
    top1, interval = parity.get("top1_agreement"), parity.get("top1_interval")
    if top1 is None or interval is None:
        return _number(top1, 3)
    return f"{top1:.3f} ({interval[0]:.3f}-{interval[1]:.3f})"


def _metrics_text(parity: dict) -> str:
    """A class map's, heatmap's or boxes' own figures (core/output_kinds.py), for the top-1 column."""
    metrics = parity.get("metrics") or {}
    return ", ".join(f"{name.replace('_', ' ')} {value:.3f}" for name, value in metrics.items()) or "-"


def _top1_change_notes(manifest: dict) -> list[str]:
    """Which samples changed their top-1 class, and by how much the reference preferred its own answer: a
    lead of a few hundredths is a near-tie, a large one a real error."""
    notes = []
    for artifact in manifest["artifacts"]:
        changes = artifact["parity"].get("top1_changes") or []
        if changes:
            listed = ", ".join(f"sample {c['sample']} (class {c['reference_class']} -> {c['artifact_class']}, "
                               f"reference lead {c['reference_lead']:.3f})" for c in changes[:MAX_LISTED_CHANGES])
            more = f" and {len(changes) - MAX_LISTED_CHANGES} more" if len(changes) > MAX_LISTED_CHANGES else ""
            notes.append(f"Top-1 changes in {Path(artifact['path']).name}: {listed}{more}.")
    return notes


def _float_fallback_notes(manifest: dict) -> list[str]:
    """Which int8 artifacts keep tensors in float, and what that bought on the calibration photos: an app
    team sees float layers in an int8 graph, and should know why they are there."""
    notes = []
    for artifact in manifest["artifacts"]:
        fallback = artifact.get("details", {}).get("int8_recipe", {}).get("float_fallback")
        if not isinstance(fallback, dict) or not fallback.get("needed"):
            continue
        name, before = Path(artifact["path"]).name, fallback["before"]
        if fallback.get("passed"):
            notes.append(f"{name} keeps {len(fallback['float_tensors'])} activation tensor(s) in float "
                         f"({', '.join(fallback['float_tensors'])}): int8 alone failed the gate on calibration "
                         f"photos (cosine {before['cosine']:.6f}), with them it reached {fallback['after']['cosine']:.6f}.")
        else:
            notes.append(f"{name} failed the gate on calibration photos (cosine {before['cosine']:.6f}) and keeping up "
                         f"to a few tensors in float did not pass it either: it is plain int8.")
    return notes


def _fps_section(bench: dict | None) -> Section:
    from validation.plots import latency_png

    if bench is None or not bench.get("rows"):
        return Section("Frame rate per device profile", (NO_BENCH,))
    rows = bench["rows"]
    table_rows = tuple((
        row["profile"], Path(row["artifact"]).name, row["runtime"], row["precision"],
        *(_number(row["latency_ms"].get(key), 2) for key in ("p50", "p90", "p99", "mean")),
        f"{row['fps']:.1f}", f"{row['target_fps']:g}", row["kind"], row.get("verdict") or ("pass" if row["passed"] else "FAIL"),
        row.get("method", ""),
    ) for row in rows)
    header = ("profile", "artifact", "runtime", "precision", "p50 ms", "p90 ms", "p99 ms", "mean ms", "FPS",
              "target FPS", "kind", "verdict", "method")
    paragraphs = [
        "measured = timed on that device or this host; projected = the cost model's estimate for the profile. "
        "FPS = 1000 / p50 (or / mean when no p50 was observed). A dash means not observed.",
    ]
    if bench.get("not_measured"):
        paragraphs.append("Not measured: " + "; ".join(bench["not_measured"]))
    plot = Plot("latency.png", latency_png(rows),
                "Latency per artifact and profile (bar: p50 or mean; whisker: p90) against the target FPS line")
    return Section("Frame rate per device profile", tuple(paragraphs), (Table(header, table_rows, "fps"),), (plot,))


def _contract_section(manifest: dict) -> Section:
    contract = manifest["input"]
    rows = tuple((key, _plain(contract[key])) for key in
                 ("name", "input_shape", "layout", "color", "pixel_scale", "mean", "std", "formula") if key in contract)
    outputs = manifest.get("outputs") or [manifest["output"]]
    rows += tuple((f"output {index}" if len(outputs) > 1 else "output", f"{output['name']} {output['shape']}")
                  for index, output in enumerate(outputs))
    for artifact in manifest["artifacts"]:
        io = artifact.get("details", {}).get("input")
        if isinstance(io, dict) and "dtype" in io:
            rows += ((f"{Path(artifact['path']).name} input", f"{io['shape']} {io['dtype']} (NHWC)"),)
    return Section("Input contract", ("What the app must feed every artifact; the bundle's snippets apply it.",),
                   (Table(("field", "value"), rows, "contract"),))


def _ops_section(manifest: dict) -> Section:
    tables = []
    for artifact in manifest["artifacts"]:
        ops = artifact.get("details", {}).get("ops")
        if ops:
            rows = tuple((op, str(count)) for op, count in sorted(ops.items(), key=lambda item: (-item[1], item[0])))
            tables.append(Table((f"{Path(artifact['path']).name}: op", "count"), rows, "ops"))
    paragraphs = () if tables else ("the manifest records no op counts",)
    return Section("Operators per artifact", paragraphs, tuple(tables))


def _layer_error_section(explains: tuple[dict, ...]) -> Section:
    from validation.plots import layer_error_png

    if not explains:
        return Section("Error per layer", (NO_EXPLAIN,))
    paragraphs, tables, plots = [], [], []
    for explain in explains:
        jump = explain.get("jump")
        where = "no layer adds a relative error of 0.001" if jump is None else (
            f"error enters at layer {jump['depth']}, {jump['onnx_layer']} ({jump['onnx_op']}): relative error "
            f"{jump['input_relative_error']:.4f} at its input, {jump['relative_error']:.4f} after it")
        paragraphs.append(f"{explain['artifact']} against {explain['reference']} on {explain['samples']} samples: "
                          f"{where}. Marked: {explain['rule']}.")
        paragraphs += [f"Not compared: {item}" for item in explain.get("unmatched", [])]
        rows = tuple((
            (">> " if jump is not None and layer["depth"] == jump["depth"] else "") + str(layer["depth"]),
            layer["onnx_layer"], layer["onnx_op"], layer["artifact_op"], f"{layer['cosine']:.5f}",
            f"{layer['relative_error']:.4f}", f"{layer['increase']:+.4f}",
            _number(layer.get("weight_relative_error"), 3),
        ) for layer in explain["layers"])
        tables.append(Table(("#", "ONNX layer", "op", "artifact op", "cosine", "rel. error", "added", "weight error"),
                            rows, "layers"))
        plots.append(Plot(f"{Path(explain['artifact']).stem}_layers.png", layer_error_png(explain),
                          f"{explain['artifact']}: relative error per layer"))
    return Section("Error per layer", tuple(paragraphs), tuple(tables), tuple(plots))


def _tools_section(manifest: dict) -> Section:
    rows = tuple((name, str(version)) for name, version in sorted(manifest.get("tools", {}).items()))
    return Section("Tool versions", (), (Table(("tool", "version"), rows, "tools"),))


# How the gate table names the figure each kind of output is gated on besides cosine (core.output_kinds.GATED_FIGURE).
FIGURE_LABELS = {"top1_agreement": "top-1", "pixel_agreement": "pixels", "peak_agreement": "peaks",
                 "box_iou": "box IoU"}


def _gate_text(thresholds: dict, kind: str | None = "logits") -> str:
    """The gate of one output (or of a record of several, kind None: the per-output rows give theirs)."""
    parts = [f"cosine ≥ {thresholds['cosine']}"]
    figure = GATED_FIGURE.get(kind or "")
    if figure and thresholds.get(figure) is not None:
        parts.append(f"{FIGURE_LABELS[figure]} ≥ {thresholds[figure]}")
    return ", ".join(parts)


def _number(value, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _plain(value) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)


# ---- rendering ------------------------------------------------------------------------------------------

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left}th{background:#f3f3f3}
td.FAIL,td.fail{color:#b00;font-weight:bold}img{max-width:100%;border:1px solid #eee}
figure{margin:.8em 0}figcaption{font-size:.85em;color:#555}
table.ops{display:inline-table;margin-right:1em;vertical-align:top}
"""
# Lets a test (and a curious reader's console) see that every plot decoded: sets data attributes on <body>.
IMAGE_CHECK = """
window.addEventListener('load', function () {
  var images = Array.prototype.slice.call(document.images);
  var decoded = images.filter(function (image) { return image.complete && image.naturalWidth > 0; });
  document.body.setAttribute('data-images', String(images.length));
  document.body.setAttribute('data-images-decoded', String(decoded.length));
});
"""


def render_html(title: str, sections: list[Section]) -> str:
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        # No network: images are inline, and the page may load nothing from anywhere.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'\">",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        parts.append(f"<section><h2>{html.escape(section.title)}</h2>")
        parts += [f"<p>{html.escape(text)}</p>" for text in section.paragraphs]
        parts += [_html_table(table) for table in section.tables]
        parts += [_html_plot(plot) for plot in section.plots]
        parts.append("</section>")
    parts += [f"<script>{IMAGE_CHECK}</script>", "</body></html>"]
    return "\n".join(parts) + "\n"


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td{_cell_class(cell)}>{html.escape(cell)}</td>" for cell in row) + "</tr>"
        for row in table.rows
    )
    return f'<table class="{table.css_class}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _cell_class(cell: str) -> str:
    return ' class="fail"' if cell.startswith("FAIL") else ""


def _html_plot(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure><img alt="{html.escape(plot.caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(plot.caption)}</figcaption></figure>")


def render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for text in section.paragraphs:
            lines += [text, ""]
        for table in section.tables:
            lines += _markdown_table(table) + [""]
        for plot in section.plots:
            lines += [f"![{plot.caption}]({PLOTS_FOLDER}/{plot.file_name})", ""]
    return "\n".join(lines)


def _markdown_table(table: Table) -> list[str]:
    def row(cells) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [row(table.header), "|" + "---|" * len(table.header), *(row(cells) for cells in table.rows)]
