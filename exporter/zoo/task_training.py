"""Training the zoo's detector and segmenter on digit scenes (exporter/zoo/scenes.py), and judging them.

Both start from trained backbones that ship with the project, so a few CPU minutes are enough: the detector's
MobileNetV2 from torchvision's ImageNet weights, the segmenter's MobileNetV3-Small from the zoo's
digit-trained weights (exporter/zoo/digits_weights). Their weights are stored in the repository
(task_weights/, float16 safetensors) with a record of how they were trained and how well they do on held-out
scenes; `bench/zoo_training.py --tasks` trains them again.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.contract import InputContract
from exporter.zoo import IMAGENET_MEAN, IMAGENET_STD, TASK_WEIGHTS_DIR, ZOO, digits, task_weights
from exporter.zoo.digits import fit, recalibrate_batch_norm, save_half_precision
from exporter.zoo.scenes import BACKGROUND, CLASSES, SCENE_SIZE, Scenes, held_out_scenes, training_scenes

SEED = 0
HELD_OUT_SCENES = 300  # judged after training
MATCH_IOU = 0.5  # an anchor (or a detection) covers an object from this IoU on, as in SSD and PASCAL VOC
IGNORED_IOU = 0.4  # anchors between this and MATCH_IOU are neither object nor background while training
NEGATIVES_PER_POSITIVE = 3  # SSD's hard negative mining
DETECTION_SCORE = 0.5  # a detection counts from this score on
NMS_IOU = 0.45
# Digits cover about 4 % of a scene's pixels: unweighted, the segmenter learned to call everything background
# (held-out mean IoU 0.12 at pixel accuracy 0.963, the background's share).
DIGIT_PIXEL_WEIGHT = 5.0


@dataclass(frozen=True)
class TaskPlan:
    steps: int
    scenes: int  # training scenes made once, sampled with replacement
    batch: int = 32
    learning_rate: float = 2e-3


PLANS = {"ssdlite_mobilenet_v2": TaskPlan(steps=800, scenes=4000, batch=16),
         "lraspp_mobilenet_v3_small": TaskPlan(steps=1500, scenes=4000, learning_rate=4e-3)}


@dataclass(frozen=True)
class TaskTrainingRecord:
    model: str
    data: str
    input_size: int
    steps: int
    batch: int
    seconds: float
    cpu_seconds: float
    held_out: dict  # quality on HELD_OUT_SCENES scenes of new photos and handwriting
    weights_file: str
    weights_bytes: int


def contract() -> InputContract:
    return InputContract(input_shape=(1, 3, SCENE_SIZE, SCENE_SIZE), mean=IMAGENET_MEAN, std=IMAGENET_STD)


def model_inputs(photos: np.ndarray) -> np.ndarray:
    scene_contract = contract()
    return np.stack([scene_contract.preprocess(photo) for photo in photos])


def build_untrained(name: str):
    from exporter.zoo.lraspp import lraspp_mobilenet_v3_small
    from exporter.zoo.ssdlite import ssdlite_mobilenet_v2

    return {"ssdlite_mobilenet_v2": ssdlite_mobilenet_v2, "lraspp_mobilenet_v3_small": lraspp_mobilenet_v3_small}[name]()


def train_and_save(name: str, folder: Path | None = None, report_every: int = 50) -> TaskTrainingRecord:
    import torch

    torch.manual_seed(SEED)
    plan = PLANS[name]
    model = build_untrained(name)
    _start_from_trained_backbone(name, model)
    scenes = training_scenes(plan.scenes, seed=SEED)
    inputs = torch.from_numpy(model_inputs(scenes.photos))
    loss_of = _detection_loss(model, scenes) if name.startswith("ssdlite") else _segmentation_loss(model, scenes)
    started, cpu_started = time.perf_counter(), time.process_time()
    fit(model, lambda batch, _: loss_of(inputs[batch], batch), len(inputs), plan.steps, plan.batch,
        plan.learning_rate, SEED, report_every, label=f"{name} ")
    recalibrate_batch_norm(model, inputs[:1000])
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    model.eval()
    path = task_weights(name, folder)
    size = save_half_precision(model, path)
    quality = judge(name, model, held_out_scenes(HELD_OUT_SCENES))
    return TaskTrainingRecord(name, "digit scenes (exporter/zoo/scenes.py)", SCENE_SIZE, plan.steps, plan.batch,
                              round(seconds, 1), round(cpu_seconds, 1), quality, path.name, size)


def record_training(record: TaskTrainingRecord, folder: Path | None = None) -> None:
    digits.record_training(record, folder or TASK_WEIGHTS_DIR)


def trained_model(name: str):
    """zoo:`name` in eval mode with its shipped weights, as the exporter loads them (float16 values in float32)."""
    from safetensors.torch import load_file

    entry = ZOO[name]
    model = entry.build()
    model.load_state_dict({key: value.float() for key, value in load_file(str(entry.pretrained_weights())).items()})
    return model.eval()


def _start_from_trained_backbone(name: str, model) -> None:
    """Copy the backbone's trained weights: features.i lands in the stage module that holds layer i."""
    import torch
    from safetensors.torch import load_file

    if name.startswith("ssdlite"):
        from exporter.zoo import torchvision_mobilenet_v2_weights
        from exporter.zoo.ssdlite import STRIDE_16_END

        state = torch.load(torchvision_mobilenet_v2_weights(), map_location="cpu", weights_only=True)
        stages = (("stride_16", 0), ("stride_32", STRIDE_16_END))
    else:
        from exporter.zoo.lraspp import STRIDE_8_END

        state = load_file(str(digits.trained_weights("mobilenet_v3_small")))
        stages = (("stride_8", 0), ("stride_16", STRIDE_8_END))
    own = model.state_dict()
    copied = {}
    for key, value in state.items():
        if not key.startswith("features."):
            continue
        layer, rest = key.removeprefix("features.").split(".", 1)
        for stage, first in reversed(stages):
            if int(layer) >= first:
                target = f"{stage}.{int(layer) - first}.{rest}"
                if target in own and own[target].shape == value.shape:
                    copied[target] = value.float()
                break
    model.load_state_dict(copied, strict=False)


def _segmentation_loss(model, scenes: Scenes):
    import torch

    masks = torch.from_numpy(scenes.masks.astype(np.int64))

    weights = torch.full((CLASSES,), DIGIT_PIXEL_WEIGHT)
    weights[BACKGROUND] = 1.0

    def loss(inputs, batch):
        return torch.nn.functional.cross_entropy(model(inputs)["mask"], masks[batch], weight=weights)

    return loss


def _detection_loss(model, scenes: Scenes):
    """SSD's loss: cross entropy over object anchors and the hardest background anchors (3 per object anchor),
    smooth L1 on the object anchors' offsets."""
    import torch

    targets = [anchor_targets(model.anchors, torch.from_numpy(boxes), torch.from_numpy(labels))
               for boxes, labels in zip(scenes.boxes, scenes.labels)]
    classes = torch.stack([t[0] for t in targets])
    offsets = torch.stack([t[1] for t in targets])

    def loss(inputs, batch):
        predicted_offsets, logits = model.raw(inputs)
        wanted, wanted_offsets = classes[batch], offsets[batch]
        objects = wanted > BACKGROUND
        per_anchor = torch.nn.functional.cross_entropy(logits.transpose(1, 2), wanted.clamp(min=0), reduction="none")
        background = wanted == BACKGROUND
        hardness = torch.where(background, per_anchor.detach(), torch.full_like(per_anchor, -1.0))
        rank = hardness.argsort(dim=1, descending=True).argsort(dim=1)
        hard = background & (rank < NEGATIVES_PER_POSITIVE * objects.sum(dim=1, keepdim=True).clamp(min=1))
        count = objects.sum().clamp(min=1)
        box_loss = torch.nn.functional.smooth_l1_loss(predicted_offsets[objects], wanted_offsets[objects],
                                                      reduction="sum")
        return (per_anchor[objects | hard].sum() + box_loss) / count

    return loss


def anchor_targets(anchors, boxes, labels):
    """Per anchor: its class (-1: ignored) and the offsets to its object. An object is matched to every anchor
    it covers with IoU >= MATCH_IOU and always to its best one."""
    import torch

    from exporter.zoo.ssdlite import encode

    classes = torch.zeros(len(anchors), dtype=torch.int64)
    offsets = torch.zeros(len(anchors), 4)
    if len(boxes) == 0:
        return classes, offsets
    overlaps = _iou_matrix(anchors, boxes)  # A x K
    best_iou, best_object = overlaps.max(dim=1)
    best_iou[overlaps.argmax(dim=0)] = 1.0
    best_object[overlaps.argmax(dim=0)] = torch.arange(len(boxes))
    classes = torch.where(best_iou >= MATCH_IOU, labels[best_object], classes)
    classes[(best_iou >= IGNORED_IOU) & (best_iou < MATCH_IOU)] = -1
    offsets = encode(anchors, boxes[best_object])
    return classes, offsets


def _iou_matrix(first, second):
    import torch

    top_left = torch.maximum(first[:, None, :2], second[None, :, :2])
    bottom_right = torch.minimum(first[:, None, 2:], second[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    area = lambda boxes: (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)  # noqa: E731
    return overlap / (area(first)[:, None] + area(second)[None, :] - overlap)


def detections(boxes: np.ndarray, scores: np.ndarray, threshold: float = DETECTION_SCORE):
    """One scene's detections from the model's outputs (A x 4 boxes, A x classes scores): the anchors whose
    best digit class scores at least `threshold`, then non-maximum suppression. Returns (boxes, classes,
    scores)."""
    from core.output_kinds import box_iou

    classes = scores[:, 1:].argmax(axis=1) + 1
    best = scores[np.arange(len(scores)), classes]
    order = [int(i) for i in np.argsort(-best, kind="stable") if best[i] >= threshold]
    kept: list[int] = []
    for index in order:
        if all(box_iou(boxes[index:index + 1], boxes[other:other + 1])[0] < NMS_IOU for other in kept):
            kept.append(index)
    return boxes[kept], classes[kept], best[kept]


def judge(name: str, model, scenes: Scenes) -> dict:
    import torch

    inputs = torch.from_numpy(model_inputs(scenes.photos))
    with torch.no_grad():
        outputs = [model(chunk) for chunk in inputs.split(50)]
    joined = {key: torch.cat([output[key] for output in outputs]).numpy() for key in outputs[0]}
    if "mask" in joined:
        return segmentation_quality(joined["mask"].argmax(axis=1), scenes.masks)
    return detection_quality(joined["boxes"], joined["scores"], scenes)


def segmentation_quality(predicted: np.ndarray, masks: np.ndarray) -> dict:
    """Pixel accuracy and mean IoU over the classes (background and digits) against the true masks."""
    ious = []
    for label in range(CLASSES):
        either = np.logical_or(predicted == label, masks == label).sum()
        if either:
            ious.append(np.logical_and(predicted == label, masks == label).sum() / either)
    return {"scenes": int(len(masks)), "pixel_accuracy": round(float((predicted == masks).mean()), 4),
            "mean_iou": round(float(np.mean(ious)), 4)}


def detection_quality(boxes: np.ndarray, scores: np.ndarray, scenes: Scenes) -> dict:
    """Recall and precision at IoU 0.5 with the right digit, detections from score DETECTION_SCORE."""
    from core.output_kinds import box_iou

    found = correct = objects = 0
    for scene_boxes, scene_scores, true_boxes, true_labels in zip(boxes, scores, scenes.boxes, scenes.labels):
        kept_boxes, kept_classes, _ = detections(scene_boxes, scene_scores)
        found += len(kept_boxes)
        objects += len(true_boxes)
        unmatched = list(range(len(true_boxes)))
        for box, label in zip(kept_boxes, kept_classes):
            for index in unmatched:
                if true_labels[index] == label and box_iou(box[None], true_boxes[index][None])[0] >= MATCH_IOU:
                    unmatched.remove(index)
                    correct += 1
                    break
    return {"scenes": int(len(boxes)), "objects": objects, "recall": round(correct / max(objects, 1), 4),
            "precision": round(correct / max(found, 1), 4)}
