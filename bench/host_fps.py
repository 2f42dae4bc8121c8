"""Host FPS of every artifact of an exported model next to ONNX Runtime on the same ONNX file, in one run.

Usage: .venv/bin/python bench/host_fps.py [out/mobilenet_v2] [--threads N] [--budget SECONDS]
Each artifact is timed in its own runtime in a fresh process (validation/host_bench.py, the same measurement
`mobile-export bench` makes); the ratio column is the artifact's FPS divided by ONNX Runtime's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.errors import MobileExportError  # noqa: E402
from targets import REGISTRY, get_target  # noqa: E402
from validation import host_bench  # noqa: E402
from validation.fps_gate import load_export, measure_artifact_on_host  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", type=Path, default=REPO / "out" / "mobilenet_v2")
    parser.add_argument("--threads", type=int, default=host_bench.default_threads())
    parser.add_argument("--budget", type=float, default=20.0, help="most seconds of timed runs per artifact")
    args = parser.parse_args()
    try:
        timed_here = tuple(name for name, target in REGISTRY.items() if target.why_not_timed_here() is None)
        model = load_export(args.model_dir, runtimes=timed_here)
    except MobileExportError as error:
        print(f"error: {error.message}\n  fix: {error.hint or 'make export TARGET=android'}", file=sys.stderr)
        return 2
    info = host_bench.host_info()  # before our own runs load the machine
    rule = host_bench.StoppingRule(budget_seconds=args.budget)
    measured = []
    for artifact in model.artifacts:
        print(f"· timing {artifact.path} ...", file=sys.stderr)
        measured.append((artifact, measure_artifact_on_host(model, artifact, args.threads, rule)))
    reference = next((m for a, m in measured if get_target(a.runtime).interchange), None)
    print(f"\nhost FPS of {model.name}: {args.threads} thread(s), {info['cpu']}, {info['logical_cores']} logical cores, "
          f"load {info['load_average_1min']}")
    print(f"{'artifact':<32} {'runtime':<7} {'prec':<5} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'FPS':>7} "
          f"{'runs':>5} {'peak MB':>8}  vs ONNX Runtime")
    for artifact, m in measured:
        ratio = "-" if reference is None else f"{m.fps / reference.fps:.2f}x"
        print(f"{artifact.path:<32} {artifact.runtime:<7} {artifact.precision:<5} {m.p50_ms:>8.2f} {m.p90_ms:>8.2f} "
              f"{m.p99_ms:>8.2f} {m.fps:>7.1f} {m.runs:>5} {m.peak_rss_mb:>8.1f}  {ratio}")
    if info["busy"]:
        print("note: the host was busy (load average above its core count): figures are pessimistic and noisy")
    return 0


if __name__ == "__main__":
    sys.exit(main())
