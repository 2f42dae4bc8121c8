"""Parity of an export's artifacts on more held-out real photos than the export itself checks.

    .venv/bin/python bench/heldout_photos.py out/mobilenet_v2
    .venv/bin/python bench/heldout_photos.py out/mobilenet_v2 --markdown bench/results/heldout_photos.md
    .venv/bin/python bench/heldout_photos.py out/my_model --photos my_held_out_photos/

This script scores the exported artifacts, unchanged, against the export's own ONNX model on its own
validation crops and on a second set of real photos in the same ten crops: by default the 20 labelled
ImageNet validation photos that ship inside the foolbox wheel, less any the export calibrated on. A default
export calibrates on the even-numbered ones and checks parity on the odd-numbered ones itself, so there the
second set repeats part of the first, with the labels: it also prints how often the reference and the
artifact name the labelled class. An export calibrated on the user's photos (--calib) never saw any of the
20. The "all held-out" row counts every photo once. Every agreement comes with its 95 % Wilson interval:
the width is the point.

It works for exports made with `--model` alone (zoo models, default flags), like bench/int8_floor.py.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.onnx2tf_by_hand import rebuild_export_inputs  # noqa: E402
from core.parity import wilson_interval  # noqa: E402

CROPS_PER_PHOTO = 10  # the ten-crop views of exporter.datasets.ten_crop_tensors
IMAGENET_CLASSES = 1000


@dataclass(frozen=True)
class PhotoSet:
    name: str
    tensors: np.ndarray  # N x C x H x W, preprocessed by the export's input contract
    reference: np.ndarray  # the export's ONNX model's outputs on them
    labels: np.ndarray | None  # one ImageNet class per crop, when the photos carry labels
    unseen: np.ndarray  # per crop: True unless the export's own validation already holds its photo


@dataclass(frozen=True)
class HeldOutRow:
    artifact: str
    photo_set: str
    crops: int
    cosine: float
    agreeing: int  # crops whose top-1 class is the reference's
    reference_correct: int | None  # crops on which the reference names the labelled class
    artifact_correct: int | None


def photo_sets(export, folder: Path | None = None) -> list[PhotoSet]:
    """The export's own validation crops, then the photos of `folder` (default: the labelled ImageNet photos
    the export did not calibrate on) in the same ten crops. Labels count only for a model with ImageNet's
    1000 classes."""
    from exporter.datasets import ten_crop_tensors
    from exporter.images import imagenet_label, imagenet_sample_photos, load_photos
    from targets.onnx import OnnxRuntimeRunner

    description = export.datasets.description
    own_photos = set(description.get("validation_photos", []))
    own = PhotoSet(f"export's own ({len(own_photos)} photos)", export.datasets.validation, export.reference, None,
                   np.ones(len(export.reference), dtype=bool))
    if folder is None:
        calibrated = set(description.get("calibration_photos", []))
        photos = [p for p in imagenet_sample_photos() if p.name not in calibrated]
        labels, name = [imagenet_label(p) for p in photos], f"ImageNet val, not calibrated on ({len(photos)} photos)"
    else:
        photos, labels, name = load_photos(folder), None, f"{folder.name} ({len(photos)} photos)"
    tensors = ten_crop_tensors(photos, export.spec.contract)
    reference = OnnxRuntimeRunner(export.onnx_model).run(tensors)
    imagenet_labels = labels is not None and reference.shape[1] == IMAGENET_CLASSES
    unseen = np.repeat([p.name not in own_photos for p in photos], CROPS_PER_PHOTO)
    return [own, PhotoSet(name, tensors, reference, np.repeat(labels, CROPS_PER_PHOTO) if imagenet_labels else None,
                          unseen)]


def measure(model_dir: Path, folder: Path | None = None) -> list[HeldOutRow]:
    export = rebuild_export_inputs(model_dir)
    sets = photo_sets(export, folder)
    rows = []
    for entry in export.manifest["artifacts"]:
        runner = _runner(model_dir, entry)
        if runner is None:
            continue
        name = Path(entry["path"]).name
        outputs = [runner.run(s.tensors) for s in sets]
        rows += [_row(name, s.name, s.reference, out, s.labels) for s, out in zip(sets, outputs)]
        if any(s.unseen.any() for s in sets[1:]):
            union = [(s.reference[s.unseen], out[s.unseen]) for s, out in zip(sets, outputs)]
            rows.append(_row(name, "all held-out", *(np.concatenate(part) for part in zip(*union)), None))
    return rows


def _runner(model_dir: Path, entry: dict):
    """A Runner for a manifest artifact, or None (printed) for the reference itself and what cannot run here."""
    from core.artifact import Artifact
    from core.errors import MobileExportError
    from exporter.loading import open_runner
    from targets import get_target

    if get_target(entry["runtime"]).interchange:
        return None
    files = [model_dir / record["path"] for record in entry["files"]]
    artifact = Artifact(files[0], entry["runtime"], entry["precision"], tuple(files[1:]), entry.get("details", {}))
    try:
        return open_runner(artifact)
    except MobileExportError as error:
        print(f"skipped {files[0].name}: {error.message}", file=sys.stderr)
        return None


def _row(artifact: str, photo_set: str, reference: np.ndarray, candidate: np.ndarray,
         labels: np.ndarray | None) -> HeldOutRow:
    from core.parity import cosine_per_sample

    reference_top1, candidate_top1 = reference.argmax(axis=1), candidate.argmax(axis=1)
    return HeldOutRow(
        artifact=artifact, photo_set=photo_set, crops=len(reference),
        cosine=float(cosine_per_sample(reference, candidate).mean()),
        agreeing=int((reference_top1 == candidate_top1).sum()),
        reference_correct=None if labels is None else int((reference_top1 == labels).sum()),
        artifact_correct=None if labels is None else int((candidate_top1 == labels).sum()),
    )


COLUMNS = ("artifact", "photos", "crops", "cosine", "top-1 agreement", "95 % interval",
           "reference correct", "artifact correct")


def _cells(row: HeldOutRow) -> list[str]:
    low, high = wilson_interval(row.agreeing, row.crops)
    correct = (lambda n: "-" if n is None else f"{n}/{row.crops}")
    return [row.artifact, row.photo_set, str(row.crops), f"{row.cosine:.6f}",
            f"{row.agreeing / row.crops:.3f} ({row.agreeing}/{row.crops})", f"{low:.3f}-{high:.3f}",
            correct(row.reference_correct), correct(row.artifact_correct)]


def markdown_table(rows: list[HeldOutRow]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(lines + ["| " + " | ".join(_cells(row)) + " |" for row in rows]) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", type=Path, help="OUT/<model> of a mobile-export export")
    parser.add_argument("--photos", type=Path,
                        help="a folder of your own held-out photos instead of the labelled ImageNet ones")
    parser.add_argument("--markdown", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    table = markdown_table(measure(args.model_dir, args.photos))
    print(table, end="")
    if args.markdown:
        args.markdown.write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
