"""Same inputs, same bytes, whatever the machine's float rounding: the default model exported under settings that
change how floats are summed, every artifact's sha256 compared.

Settings (each exports `--target android` into a folder of its own, in a child process):
- the int8 recipe's thread count, MOBILE_EXPORT_INT8_THREADS = 1, 2 or 4 (how torch splits the simulator's
  float64 sums);
- the BLAS and OpenMP thread counts numpy, torch and ONNX Runtime read from the environment (OMP_NUM_THREADS,
  MKL_NUM_THREADS, OPENBLAS_NUM_THREADS = 1, 2 or 4);
- MKL's code path (MKL_ENABLE_INSTRUCTIONS = AVX2 beside the machine's own), which changes the order of a
  dot product's additions the way another CPU would.

    .venv/bin/python bench/reproducibility.py [--model zoo:mobilenet_v2] [--out /tmp/reproducibility]

Prints every artifact's sha256 per setting; exit 1 when an artifact the manifest calls reproducible differs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "1 thread": {"MOBILE_EXPORT_INT8_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                 "OPENBLAS_NUM_THREADS": "1"},
    "2 threads": {"MOBILE_EXPORT_INT8_THREADS": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2",
                  "OPENBLAS_NUM_THREADS": "2"},
    "4 threads, MKL as on an AVX2 CPU": {"MOBILE_EXPORT_INT8_THREADS": "4", "OMP_NUM_THREADS": "4",
                                         "MKL_NUM_THREADS": "4", "OPENBLAS_NUM_THREADS": "4",
                                         "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}


def export(model: str, out: Path, settings: dict[str, str]) -> dict:
    env = {**os.environ, **settings, "PYTHONPATH": str(REPO)}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "exporter.cli", "export", "--model", model, "--target", "android",
                             "--out", str(out)], capture_output=True, text=True, env=env)
    if result.returncode not in (0, 1):  # 1: a parity gate failed; the artifacts are written and compared all the same
        raise SystemExit(f"export failed ({result.returncode}):\n{result.stderr[-3000:]}")
    (folder,) = [p for p in out.iterdir() if (p / "manifest.json").is_file()]
    manifest = json.loads((folder / "manifest.json").read_text())
    return {"seconds": round(time.perf_counter() - started, 1),
            "exit_code": result.returncode,
            # every file of an artifact (an ncnn .param holds no weights; its .bin does)
            "artifacts": {a["path"]: {"sha256": _files_sha256(a), "reproducible": a["reproducible"],
                                      "cosine": a["parity"]["cosine"], "top1": a["parity"]["top1_agreement"]}
                          for a in manifest["artifacts"]}}


def _files_sha256(artifact: dict) -> str:
    files = artifact.get("files") or [{"sha256": artifact["sha256"]}]
    return files[0]["sha256"] if len(files) == 1 else hashlib.sha256("".join(f["sha256"] for f in files).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:mobilenet_v2")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "reproducibility")
    args = parser.parse_args(argv)
    runs = {}
    for name, settings in SETTINGS.items():
        print(f"· export with {name} ...", file=sys.stderr, flush=True)
        runs[name] = export(args.model, args.out / name.split(",")[0].replace(" ", "_"), settings)
    paths = list(next(iter(runs.values()))["artifacts"])
    print(f"| artifact | {' | '.join(runs)} | same |")
    print(f"|---|{'---|' * len(runs)}---|")
    differing = []
    for path in paths:
        digests = [run["artifacts"][path]["sha256"][:16] for run in runs.values()]
        same = len(set(digests)) == 1
        reproducible = next(iter(runs.values()))["artifacts"][path]["reproducible"]
        if reproducible and not same:
            differing.append(path)
        print(f"| {path} | {' | '.join(digests)} | {'yes' if same else 'NO'}{'' if reproducible else ' (not claimed)'} |")
    print(f"\n| artifact | {' | '.join(runs)} |  (parity: cosine / top-1 agreement)")
    print(f"|---|{'---|' * len(runs)}")
    for path in paths:
        figures = [f"{run['artifacts'][path]['cosine']:.6f} / {run['artifacts'][path]['top1']:.3f}"
                   for run in runs.values()]
        print(f"| {path} | {' | '.join(figures)} |")
    print("export seconds (exit code): " + ", ".join(f"{name} {run['seconds']} ({run['exit_code']})"
                                                    for name, run in runs.items()))
    if differing:
        print(f"NOT reproducible though the manifest says so: {', '.join(differing)}")
        return 1
    print("every artifact the manifest calls reproducible has the same bytes under every setting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
