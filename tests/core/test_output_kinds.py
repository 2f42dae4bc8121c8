"""Output kinds: inferred where the shape says it, given in the config otherwise, each judged by its own figure."""
from __future__ import annotations

import numpy as np
import pytest

from core.errors import InputError
from core.output_kinds import box_iou, kind_metrics, resolve_kinds
from core.parity import DEFAULT_THRESHOLDS, compare, snr_db

INT8 = DEFAULT_THRESHOLDS["int8"]


def test_kinds_are_inferred_where_the_shape_leaves_no_doubt_and_given_otherwise():
    shapes = {"scores": (1, 10), "mask": (1, 5, 8, 8), "boxes": (1, 20, 4)}
    assert resolve_kinds(shapes, {}) == {"scores": "logits", "mask": "tensor", "boxes": "tensor"}
    assert resolve_kinds(shapes, {"mask": "class_map", "boxes": "boxes"}) == {
        "scores": "logits", "mask": "class_map", "boxes": "boxes"}


@pytest.mark.parametrize("given, message", [
    ({"masks": "class_map"}, "[outputs.masks] names no output of the model; it has scores, mask"),
    ({"mask": "segmentation"}, "[outputs.mask] kind 'segmentation' is not a known kind"),
    ({"scores": "class_map"}, "output 'scores' has shape [1, 10], which a class_map cannot have"),
    ({"mask": "boxes"}, "output 'mask' has shape [1, 5, 8, 8], which a boxes cannot have"),
])
def test_a_kind_that_does_not_fit_the_model_is_an_input_error(given, message):
    with pytest.raises(InputError) as error:
        resolve_kinds({"scores": (1, 10), "mask": (1, 5, 8, 8)}, given)
    assert message in error.value.message


def _class_map(samples=6, classes=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples, classes, size, size)).astype(np.float32)


def test_a_class_map_is_judged_by_pixel_agreement_and_mean_iou():
    reference = _class_map()
    same = kind_metrics("class_map", reference, reference)
    assert same == {"pixel_agreement": 1.0, "mean_iou": 1.0}
    flipped = np.zeros(reference[:, 0].size, bool)
    flipped[::20] = True  # every 20th pixel, 5 %: its scores negated, so its argmax moves to the smallest
    changed = np.where(flipped.reshape(reference[:, 0].shape)[:, None], -reference, reference)
    metrics = kind_metrics("class_map", reference, changed)
    expected_labels, found_labels = reference.argmax(1), changed.argmax(1)
    assert metrics["pixel_agreement"] == pytest.approx((expected_labels == found_labels).mean())
    assert 0.94 <= metrics["pixel_agreement"] <= 0.96
    ious = [((expected_labels == c) & (found_labels == c)).sum() / ((expected_labels == c) | (found_labels == c)).sum()
            for c in range(4)]
    assert metrics["mean_iou"] == pytest.approx(np.mean(ious))
    # The cosine of such a map stays high; the int8 gate on pixels (0.98) is what fails, and says so.
    result = compare(reference, changed, INT8, "class_map")
    assert "pixel agreement" in "; ".join(result.failures)
    assert compare(reference, reference, INT8, "class_map").passed


def test_heatmap_peaks_agree_within_one_cell_and_not_two():
    reference = np.zeros((1, 2, 9, 9), np.float32)
    reference[0, 0, 4, 4] = reference[0, 1, 2, 2] = 1.0
    one_over, two_over = np.zeros_like(reference), np.zeros_like(reference)
    one_over[0, 0, 5, 5] = one_over[0, 1, 2, 3] = 1.0
    two_over[0, 0, 4, 6] = two_over[0, 1, 2, 2] = 1.0
    assert kind_metrics("heatmap", reference, one_over) == {"peak_agreement": 1.0}
    assert kind_metrics("heatmap", reference, two_over) == {"peak_agreement": 0.5}


def test_box_iou_is_the_overlap_over_the_union():
    first = np.array([[0, 0, 2, 2], [0, 0, 2, 2], [5, 5, 5, 5]], np.float32)
    second = np.array([[1, 1, 3, 3], [2, 2, 0, 0], [5, 5, 5, 5]], np.float32)  # corners in either order
    np.testing.assert_allclose(box_iou(first, second), [1 / 7, 1.0, 1.0])
    boxes = np.array([[[0, 0, 10, 10], [20, 20, 40, 40]]], np.float32)
    shifted = boxes + np.array([1, 0, 1, 0], np.float32)  # one pixel right: IoU 9/11 for the small box
    result = compare(boxes, shifted, INT8, "boxes")
    assert result.metrics["box_iou"] == pytest.approx((9 / 11 + 19 * 20 / (21 * 20)) / 2, abs=1e-6)
    assert "mean box IoU" in "; ".join(result.failures)


def test_snr_is_signal_power_over_error_power_in_decibels():
    reference = np.ones((4, 100))
    assert snr_db(reference, reference + 0.1) == pytest.approx(20.0)
    assert snr_db(reference, reference) == 200.0


def test_the_config_gives_an_output_its_kind(tmp_path):
    from exporter.config import build_spec
    from tests.helpers import NO_FLAGS

    config = tmp_path / "export.toml"
    config.write_text('[outputs.mask]\nkind = "class_map"\n')
    assert build_spec(dict(NO_FLAGS), config).output_kinds == {"mask": "class_map"}
    config.write_text('[outputs.mask]\nkind = "class_map"\nclasses = 3\n')
    with pytest.raises(InputError) as error:
        build_spec(dict(NO_FLAGS), config)
    assert "[outputs.mask] must hold exactly one key, kind" in error.value.message


def test_the_int8_recipe_scores_each_sample_by_its_outputs_own_figure():
    """Per sample, what the recipe's choices compare: a class map's pixel agreement, boxes' IoU (here 0.5 and
    1.0 by construction), and nothing for logits, whose per-sample top-1 is a yes or no."""
    from core.output_kinds import figure_per_sample

    reference = np.zeros((2, 3, 2, 2))
    reference[:, 0] = 1.0
    candidate = reference.copy()
    candidate[0, 1, 0, :] = 2.0  # two of the first sample's four pixels change class
    assert figure_per_sample("class_map", reference, candidate).tolist() == [0.5, 1.0]
    boxes = np.array([[[0, 0, 2, 2]], [[0, 0, 2, 2]]], float)
    moved = boxes + np.array([[[0, 0, 2, 0]], [[0, 0, 0, 0]]])  # the first box twice as wide: IoU 4/8
    assert figure_per_sample("boxes", boxes, moved).tolist() == [0.5, 1.0]
    assert figure_per_sample("logits", np.eye(2), np.eye(2)) is None
