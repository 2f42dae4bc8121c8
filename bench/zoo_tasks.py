"""The zoo's detector and segmenter after their exports: each artifact's per-output figures, and for the
detector, on held-out scenes, how often each object keeps its class and its boxes.

    make export TARGET=all MODEL=zoo:ssdlite_mobilenet_v2 OUT=/tmp/tasks
    make export TARGET=all MODEL=zoo:lraspp_mobilenet_v3_small OUT=/tmp/tasks
    .venv/bin/python bench/zoo_tasks.py /tmp/tasks --markdown bench/results/zoo_tasks.md

The per-output figures are the manifest's (parity on the export's 150 held-out scenes). "Objects keep their
class": on the same held-out scenes, the anchors that cover a true object (IoU >= 0.5, or its best anchor, as
in training) and the class their scores pick, the artifact's against PyTorch's; "box IoU on objects": the mean
IoU of those anchors' decoded boxes, the artifact's with PyTorch's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.artifact import Artifact, outputs_of  # noqa: E402
from core.output_kinds import GATED_FIGURE, box_iou  # noqa: E402
from targets import get_target  # noqa: E402

DETECTOR, SEGMENTER = "ssdlite_mobilenet_v2", "lraspp_mobilenet_v3_small"


def artifact_rows(model_dir: Path) -> list[dict]:
    """One row per artifact and output: kind, cosine, SNR and the kind's gated figure, and the verdict."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    rows = []
    for artifact in manifest["artifacts"]:
        parity = artifact["parity"]
        per_output = parity["per_output"] or {manifest["outputs"][0]["name"]: parity}
        for name, record in per_output.items():
            figure = GATED_FIGURE.get(record["kind"])
            rows.append({"model": model_dir.name, "artifact": f"{artifact['runtime']} {artifact['precision']}",
                         "output": name, "kind": record["kind"], "cosine": round(record["cosine"], 6),
                         "snr_db": round(record["snr_db"], 1),
                         "figure": f"{figure} {record['metrics'][figure]:.4f}" if figure else "-",
                         "passed": parity["passed"]})
    return rows


def objects_kept(model_dir: Path, scene_count: int = 150) -> list[dict]:
    """Per detector artifact: objects' anchors keeping their class, and their boxes' IoU with PyTorch's."""
    import torch

    from exporter.zoo import ZOO
    from exporter.zoo.scenes import BACKGROUND, held_out_scenes
    from exporter.zoo.ssdlite import anchor_boxes
    from exporter.zoo.task_training import anchor_targets, model_inputs, trained_model

    model = trained_model(DETECTOR)
    scenes = held_out_scenes(scene_count)
    inputs = model_inputs(scenes.photos)
    with torch.no_grad():
        reference = {key: value.numpy() for key, value in model(torch.from_numpy(inputs)).items()}
    anchors = anchor_boxes(ZOO[DETECTOR].input_size)
    objects = np.stack([(anchor_targets(anchors, torch.from_numpy(boxes), torch.from_numpy(labels))[0] > BACKGROUND)
                        .numpy() for boxes, labels in zip(scenes.boxes, scenes.labels)])
    manifest = json.loads((model_dir / "manifest.json").read_text())
    rows = []
    for record in manifest["artifacts"]:
        files = [model_dir / entry_file["path"] for entry_file in record["files"]]
        artifact = Artifact(files[0], record["runtime"], record["precision"], tuple(files[1:]), record["details"])
        outputs = outputs_of(get_target(record["runtime"]).load(artifact), inputs, ("boxes", "scores"))
        same = reference["scores"][objects].argmax(axis=1) == outputs["scores"][objects].argmax(axis=1)
        ious = box_iou(reference["boxes"][objects], outputs["boxes"][objects])
        rows.append({"artifact": f"{record['runtime']} {record['precision']}", "object_anchors": int(objects.sum()),
                     "same_class": round(float(same.mean()), 4), "box_iou_on_objects": round(float(ious.mean()), 4)})
    return rows


def _markdown(header: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[key]) for key in header) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the OUT folder both models were exported into")
    parser.add_argument("--markdown", type=Path, help="also write the tables here")
    args = parser.parse_args()
    rows = [row for name in (DETECTOR, SEGMENTER) if (args.out / name / "manifest.json").is_file()
            for row in artifact_rows(args.out / name)]
    text = "## Every artifact, per output (parity on 150 held-out scenes)\n\n"
    text += _markdown(["model", "artifact", "output", "kind", "cosine", "snr_db", "figure", "passed"], rows)
    if (args.out / DETECTOR / "manifest.json").is_file():
        text += "\n## Detector: objects of 150 held-out scenes, each artifact against PyTorch\n\n"
        text += _markdown(["artifact", "object_anchors", "same_class", "box_iou_on_objects"],
                          objects_kept(args.out / DETECTOR))
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
