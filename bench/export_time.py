"""Wall time of each export stage for the embedded default model (MobileNetV2, ImageNet weights), then of a
second export with nothing changed (which reuses the converted artifacts) and the ratio of the two.

Usage: .venv/bin/python bench/export_time.py [--target android] [--out DIR] [--once]
Prints one line per stage and the totals; the numbers come from the same StageClock the CLI uses.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporter.config import build_spec  # noqa: E402
from exporter.pipeline import run_export  # noqa: E402
from exporter.progress import StageClock  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="android")
    parser.add_argument("--model", default="zoo:mobilenet_v2")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--once", action="store_true", help="skip the unchanged second export")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="export-time-"))
    spec = build_spec({"model": args.model, "target": args.target, "out": str(out)})
    first = timed_export(spec, f"export stage wall times, {args.model} -> {args.target}")
    if not args.once:
        second = timed_export(spec, "the same export again, nothing changed")
        print(f"\nsecond export took {second:.1f} s = {second / first:.1%} of the first ({first:.1f} s)")


def timed_export(spec, title: str) -> float:
    clock = StageClock(lambda line: print(line, file=sys.stderr))
    started = time.perf_counter()
    report = run_export(spec, clock)
    total = time.perf_counter() - started
    print(f"\n{title} ({'gates passed' if report.passed else 'GATE FAILED'})")
    for stage, seconds in report.seconds.items():
        print(f"  {stage:<45} {seconds:8.1f} s")
    print(f"  {'total':<45} {total:8.1f} s")
    return total


if __name__ == "__main__":
    main()
