"""The zoo export matrix: every zoo model through `mobile-export export`, one row per artifact.

    .venv/bin/python bench/zoo_matrix.py --out /tmp/zoo                     # every zoo model, --target android
    .venv/bin/python bench/zoo_matrix.py --models shufflenet_v2_x1_0 squeezenet1_1 --target all
    .venv/bin/python bench/zoo_matrix.py --out /tmp/zoo --before old/zoo_matrix.json
    .venv/bin/python bench/zoo_matrix.py --out /tmp/zoo --exported-only --before /tmp/zoo/onnx2tf_by_hand.json
    .venv/bin/python bench/zoo_matrix.py --out /tmp/zoo --exported-only      # the table so far, no exports

Each model is exported by the real command line in a child process, exactly as a user runs it, and its
manifest read back: per artifact the parity (cosine, top-1 agreement, gate), the size, the seconds its
target took to convert, and the layout ops left in the graph (TFLite TRANSPOSE and PAD/PADV2/MIRROR_PAD,
ncnn Permute and Padding). Resumable: a model whose manifest already exists is read, not exported again,
unless --force. The table is printed and written as JSON and Markdown next to the exports.

The command is exactly `mobile-export export --model zoo:NAME --target T --out OUT`: mobilenet_v2 with its
ImageNet weights on the built-in photos, every other classifier with its weights trained on handwritten digits,
calibrated on training digits and checked on held-out ones (`exporter/zoo/digits.py`; a weight set neither
the package nor the cache holds is trained by that export first, one to nine CPU minutes), the detector and the
segmenter with their weights trained on digit scenes, checked on held-out scenes (`exporter/zoo/scenes.py`).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from fnmatch import fnmatch
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from exporter.config import DEFAULT_TARGET  # noqa: E402
from exporter.zoo import CLASSIFIER, ZOO  # noqa: E402
from targets import get_target, target_groups  # noqa: E402

MOBILE_EXPORT = REPO / ".venv" / "bin" / "mobile-export"
TABLE_NAME = "zoo_matrix"
# Layout ops each runtime's graph may carry, by the names its own op counts use.


@dataclass(frozen=True)
class MatrixRow:
    model: str
    weights: str  # "imagenet", "digits (trained)" or "digit scenes (trained)"
    artifact: str  # "tflite int8"
    exit_code: int
    cosine: float | None
    top1_agreement: float | None
    passed: bool
    megabytes: float | None
    convert_seconds: float | None  # the artifact's target (all its precisions together); ONNX: export + simplify
    export_seconds: float  # the whole export of this model, wall clock
    transposes: int | None
    pads: int | None
    failures: str = ""


@dataclass(frozen=True)
class ExportRun:
    """How one model is exported: the command line and the folder its manifest lands in."""

    model: str
    weights_kind: str
    arguments: tuple[str, ...]
    model_dir: Path


def plan_runs(models: list[str], target: str, out: Path) -> list[ExportRun]:
    return [
        ExportRun(name, _weights_kind(name), ("--model", f"zoo:{name}", "--target", target, "--out", str(out)), out / name)
        for name in models
    ]


def _weights_kind(name: str) -> str:
    entry = ZOO[name]
    if entry.task != CLASSIFIER:
        return "digit scenes (trained)"
    return "imagenet" if entry.pretrained_weights else "digits (trained)"


def run_one(run: ExportRun, force: bool, timeout_s: float) -> tuple[int, float, dict | None]:
    """Export unless a manifest is already there; returns (exit code, seconds, manifest or None)."""
    manifest_path = run.model_dir / "manifest.json"
    record_path = run.model_dir.parent / f"{run.model_dir.name}.matrix.json"
    if manifest_path.is_file() and not force:
        return _earlier_run(manifest_path, record_path)
    manifest_path.unlink(missing_ok=True)
    run.model_dir.parent.mkdir(parents=True, exist_ok=True)
    log_path = run.model_dir.parent / f"{run.model_dir.name}.export.log"
    started = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            exit_code = subprocess.run([str(MOBILE_EXPORT), "export", *run.arguments], stdout=log,
                                       stderr=subprocess.STDOUT, timeout=timeout_s, cwd=REPO).returncode
        except subprocess.TimeoutExpired:
            exit_code = -1
    seconds = time.perf_counter() - started
    record_path.write_text(json.dumps({"exit_code": exit_code, "seconds": round(seconds, 1),
                                       "arguments": list(run.arguments)}))
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
    return exit_code, seconds, manifest


def _earlier_run(manifest_path: Path, record_path: Path) -> tuple[int, float, dict]:
    """An export made earlier: by this script (its record has the exit code and wall time) or by hand (the
    manifest's gate verdict and the sum of its stage times stand in for them)."""
    manifest = json.loads(manifest_path.read_text())
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        return record["exit_code"], record["seconds"], manifest
    return (0 if manifest["gates_passed"] else 1), sum(manifest.get("stage_seconds", {}).values()), manifest


def rows_of(run: ExportRun, exit_code: int, seconds: float, manifest: dict | None) -> list[MatrixRow]:
    if manifest is None:
        log = f"{run.model_dir.name}.export.log"
        reason = "timed out" if exit_code == -1 else f"no manifest (exit {exit_code}, see {log})"
        return [MatrixRow(run.model, run.weights_kind, "-", exit_code, None, None, False, None, None,
                          round(seconds, 1), None, None, reason)]
    stage_seconds = manifest.get("stage_seconds", {})
    rows = []
    for artifact in manifest["artifacts"]:
        runtime, parity, ops = artifact["runtime"], artifact["parity"], artifact["details"].get("ops")
        rows.append(MatrixRow(
            model=run.model, weights=run.weights_kind, artifact=f"{runtime} {artifact['precision']}",
            exit_code=exit_code, cosine=parity["cosine"], top1_agreement=parity["top1_agreement"],
            passed=parity["passed"], megabytes=round(artifact["total_bytes"] / 1e6, 3),
            convert_seconds=_convert_seconds(runtime, stage_seconds), export_seconds=round(seconds, 1),
            transposes=count_ops(ops, get_target(runtime).layout_ops), pads=count_ops(ops, get_target(runtime).pad_ops),
            failures="; ".join(parity["failures"]),
        ))
    return rows


def _convert_seconds(runtime: str, stage_seconds: dict) -> float | None:
    if get_target(runtime).interchange:
        return round(sum(v for k, v in stage_seconds.items() if k in ("export ONNX", "simplify and check ONNX")), 1)
    seconds = stage_seconds.get(f"convert {runtime}")
    return None if seconds is None else round(seconds, 1)


def count_ops(ops: dict | None, names: tuple[str, ...]) -> int | None:
    """How many ops of the given kinds; None when the artifact records no op counts or the runtime has no such
    kinds (ONNX Runtime, Core ML)."""
    if ops is None or not names:
        return None
    return sum(ops.get(name, 0) for name in names)


# ---- the table --------------------------------------------------------------------------------------------

COLUMNS = ("model", "weights", "artifact", "cosine", "top-1", "MB", "convert s", "export s", "TRANSPOSE", "PAD", "gate")


def _cells(row: MatrixRow) -> list[str]:
    def number(value, digits: int) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    gate = "pass" if row.passed else ("FAIL: " + row.failures if row.failures else "FAIL")
    return [row.model, row.weights, row.artifact, number(row.cosine, 6), number(row.top1_agreement, 3),
            number(row.megabytes, 2), number(row.convert_seconds, 1), number(row.export_seconds, 0),
            "-" if row.transposes is None else str(row.transposes), "-" if row.pads is None else str(row.pads), gate]


def _before_cells(row: MatrixRow, before: dict[tuple[str, str], dict]) -> list[str]:
    old = before.get((row.model, row.artifact))
    if old is None:
        return ["-"] * len(BEFORE_COLUMNS)

    def number(key: str, digits: int) -> str:
        return "-" if old.get(key) is None else f"{old[key]:.{digits}f}"

    return [number("cosine", 6), number("top1_agreement", 3), number("megabytes", 2),
            "-" if old.get("transposes") is None else str(old["transposes"]),
            "-" if old.get("pads") is None else str(old["pads"]), number("export_seconds", 0)]


BEFORE_COLUMNS = ("cosine before", "top-1 before", "MB before", "TRANSPOSE before", "PAD before", "export s before")


def text_table(rows: list[MatrixRow], before: dict | None) -> str:
    header = list(COLUMNS) + (list(BEFORE_COLUMNS) if before is not None else [])
    body = [_cells(row) + (_before_cells(row, before) if before is not None else []) for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in [header, *body]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(rows: list[MatrixRow], before: dict | None) -> str:
    header = list(COLUMNS) + (list(BEFORE_COLUMNS) if before is not None else [])
    body = [_cells(row) + (_before_cells(row, before) if before is not None else []) for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in line) + " |" for line in body]
    return "\n".join(lines) + "\n"


def read_before(path: Path) -> dict[tuple[str, str], dict]:
    return {(row["model"], row["artifact"]): row for row in json.loads(path.read_text())["rows"]}


def select_models(patterns: list[str] | None) -> list[str]:
    names = list(ZOO)
    if not patterns:
        return names
    chosen = [name for name in names if any(fnmatch(name, pattern) for pattern in patterns)]
    if not chosen:
        raise SystemExit(f"no zoo model matches {patterns}; choose from: {', '.join(names)}")
    return chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", help="zoo names or shell patterns (shufflenet_*); default: all")
    parser.add_argument("--target", default=DEFAULT_TARGET, choices=tuple(target_groups()))
    parser.add_argument("--out", type=Path, default=Path("/tmp/zoo"))
    parser.add_argument("--force", action="store_true", help="export again even where a manifest exists")
    parser.add_argument("--exported-only", action="store_true",
                        help="export nothing: the table of the models OUT already holds a manifest for")
    parser.add_argument("--before", type=Path, help="an earlier zoo_matrix.json to compare with, or the "
                        "onnx2tf_by_hand.json of bench/onnx2tf_by_hand.py (int8 as onnx2tf makes it by hand)")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per model export")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    before = read_before(args.before) if args.before else None
    rows: list[MatrixRow] = []
    runs = plan_runs(select_models(args.models), args.target, out)
    if args.exported_only:
        runs = [run for run in runs if (run.model_dir / "manifest.json").is_file()]
    for run in runs:
        exit_code, seconds, manifest = run_one(run, args.force, args.timeout)
        rows += rows_of(run, exit_code, seconds, manifest)
        print(f"{run.model}: exit {exit_code} in {seconds:.0f} s", file=sys.stderr, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{TABLE_NAME}.json").write_text(json.dumps(
        {"target": args.target, "rows": [asdict(row) for row in rows]}, indent=2) + "\n")
    (out / f"{TABLE_NAME}.md").write_text(markdown_table(rows, before))
    print(text_table(rows, before))
    print(f"\ntable: {out / TABLE_NAME}.json and .md", file=sys.stderr)
    return 0 if all(row.passed and row.exit_code == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
