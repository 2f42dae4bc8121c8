"""Every zoo family through the Core ML target, with parity run by the evaluator this machine has.

Zoo models other than mobilenet_v2 come with random weights, and random weights are degenerate in a way
that matters for float16: with He-initialized depthwise convolutions and unit batch-norm statistics every
block shrinks the signal, and the logits end up at 1e-9 to 1e-24 (measured: MobileNetV1 ~1e-23,
MobileNetV3 ~1e-9, EfficientNet-B0 ~1e-13), below float16's smallest number (6e-8). A float16 program
then outputs exact zeros, which is what Core ML on the GPU or Neural Engine would output too, and parity
fails with cosine 0. That says nothing about a trained model.

So by default (`--bn-stats photos`) each random model's batch-norm statistics are first measured on the
built-in photos (train-mode forward passes, cumulative average), as a trained network's are: every
normalized layer then has unit scale, and logits land near 0.1-1 like a trained classifier's. The conv
weights stay random. `--bn-stats init` exports the models exactly as the zoo builds them.

    .venv/bin/python bench/coreml_zoo.py                     # one model per family, default size
    .venv/bin/python bench/coreml_zoo.py --models mobilenet_v3_small squeezenet1_1 --out /tmp/coreml_zoo
    .venv/bin/python bench/coreml_zoo.py --all               # all 37 zoo entries

Prints one row per (model, Core ML precision): cosine, top-1 agreement, evaluator, export seconds.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# One per family, at its default size (mobilenet_v2 is the pretrained default model).
FAMILIES = ("mobilenet_v2", "mobilenet_v1", "mobilenet_v3_large", "mobilenet_v3_small", "shufflenet_v2_x1_0",
            "shufflenet_v1_g3", "squeezenet1_0", "squeezenet1_1", "mnasnet1_0", "efficientnet_b0",
            "efficientnet_lite0")
BN_BATCH = 16


def measured_bn_weights(name: str, folder: Path) -> Path:
    """The zoo model's random weights with batch-norm statistics measured on the built-in photos."""
    import torch

    from exporter.datasets import DatasetPlan, build_datasets
    from exporter.zoo import IMAGENET_MEAN, IMAGENET_STD, ZOO
    from exporter.contract import InputContract

    entry = ZOO[name]
    contract = InputContract(entry.input_shape, IMAGENET_MEAN, IMAGENET_STD)
    photos = torch.from_numpy(build_datasets(DatasetPlan("builtin", None), contract).calibration)
    torch.manual_seed(0)
    model = entry.build()
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over every batch
    model.train()
    with torch.no_grad():
        for start in range(0, len(photos), BN_BATCH):
            model(photos[start : start + BN_BATCH])
    path = folder / f"{name}_bn_measured.pt"
    torch.save(model.eval().state_dict(), path)
    return path


def export(name: str, out: Path, weights: Path | None) -> dict:
    command = [sys.executable, "-m", "exporter.cli", "export", "--model", f"zoo:{name}", "--target", "ios",
               "--out", str(out), *(["--weights", str(weights)] if weights else [])]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (out / f"{name}.log").write_text(result.stderr + result.stdout)
    manifest_path = out / name / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if result.returncode in (0, 1) and manifest_path.is_file() else None
    return {"name": name, "exit_code": result.returncode, "seconds": seconds, "manifest": manifest,
            "error": "" if manifest else (result.stderr.strip().splitlines() or ["?"])[-2:]}


def rows(outcome: dict) -> list[str]:
    if outcome["manifest"] is None:
        return [f"{outcome['name']:<22} {'-':<8} exit {outcome['exit_code']}: {' '.join(outcome['error'])[:150]}"]
    lines = []
    for artifact in outcome["manifest"]["artifacts"]:
        if artifact["runtime"] != "coreml":
            continue
        parity = artifact["parity"]
        top1 = "-" if parity["top1_agreement"] is None else f"{parity['top1_agreement']:.3f}"
        lines.append(
            f"{outcome['name']:<22} {artifact['precision']:<8} {parity['cosine']:>9.6f} {top1:>6} "
            f"{parity['max_abs']:>9.2e} {artifact['details']['evaluator']:<15} {outcome['seconds']:>6.0f}  "
            + ("pass" if parity["passed"] else "FAIL " + "; ".join(parity["failures"]))
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--all", action="store_true", help="every zoo entry, not one per family")
    parser.add_argument("--bn-stats", choices=("photos", "init"), default="photos")
    parser.add_argument("--out", type=Path, default=Path("/tmp/coreml_zoo_bench"))
    args = parser.parse_args()
    from exporter.zoo import ZOO

    names = args.models or (list(ZOO) if args.all else list(FAMILIES))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"{'model':<22} {'prec':<8} {'cosine':>9} {'top-1':>6} {'max|Δ|':>9} {'evaluator':<15} {'secs':>6}  gate")
    failures = 0
    for name in names:
        pretrained = ZOO[name].pretrained_weights is not None
        weights = None if pretrained or args.bn_stats == "init" else measured_bn_weights(name, args.out)
        outcome = export(name, args.out, weights)
        failures += outcome["exit_code"] != 0
        for line in rows(outcome):
            print(line, flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
