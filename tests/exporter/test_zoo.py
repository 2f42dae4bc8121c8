"""The zoo: every model builds and runs, its size and cost match the published figures, keys match torchvision.

Counts come from exporter.model_stats, which is itself checked on small models counted by hand.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from exporter.model_stats import model_stats
from exporter.zoo import CLASSIFIERS, ZOO
from exporter.zoo.blocks import SqueezeExcitation
from tests.helpers import REPO

TOLERANCE = 0.03

# name: (params in millions or None, MACs in millions, where the figure is published)
PUBLISHED = {
    "mobilenet_v1": (4.2, 569, "Howard et al. 2017, Tables 6-7"),
    "mobilenet_v1_0_75": (2.6, 325, "Howard et al. 2017, Table 6"),
    "mobilenet_v1_0_5": (1.3, 149, "Howard et al. 2017, Table 6"),
    "mobilenet_v1_0_25": (None, 41, "Howard et al. 2017, Table 6 (0.5 M params is rounded to one digit)"),
    "mobilenet_v1_1_0_192": (4.2, 418, "Howard et al. 2017, Table 7"),
    "mobilenet_v1_1_0_160": (4.2, 290, "Howard et al. 2017, Table 7"),
    "mobilenet_v1_1_0_128": (4.2, 186, "Howard et al. 2017, Table 7"),
    "mobilenet_v2": (3.5, 300, "Sandler et al. 2018, Table 4"),
    "mobilenet_v3_large": (5.5, 219, "Howard et al. 2019, Table 3; torchvision docs for params"),
    "mobilenet_v3_small": (2.5, 56, "Howard et al. 2019, Table 4"),
    "shufflenet_v2_x0_5": (1.4, 41, "Ma et al. 2018, Table 8; torchvision docs for params"),
    "shufflenet_v2_x1_0": (2.3, 146, "Ma et al. 2018, Table 8"),
    "shufflenet_v2_x1_5": (3.5, 299, "Ma et al. 2018, Table 8; torchvision docs for params"),
    "shufflenet_v2_x2_0": (7.4, 591, "Ma et al. 2018, Table 8; torchvision docs for params"),
    "shufflenet_v1_g3": (None, 140, "Zhang et al. 2017, Table 2 (ShuffleNet 1x)"),
    # torchvision's "GFLOPS" column counts multiply-adds: 0.35 for SqueezeNet 1.1 is 350 M MACs.
    "squeezenet1_0": (1.25, 820, "torchvision docs (0.82 GFLOPS)"),
    "squeezenet1_1": (1.2, 350, "torchvision docs (0.35 GFLOPS); issue 3"),
    "mnasnet1_0": (4.4, 310, "torchvision docs (0.31 GFLOPS); the paper's A1 with SE is 3.9 M / 312 M"),
    "efficientnet_b0": (5.3, 390, "Tan & Le 2019, Table 2"),
}

# torchvision's `num_params` for the same architectures: equal counts mean equal layer shapes.
TORCHVISION_PARAMS = {
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "mnasnet1_0": 4_383_312,
    "efficientnet_b0": 5_288_548,
}

# A few keys of torchvision's published checkpoints, with their shapes, one or more per family.
TORCHVISION_KEYS = {
    "mobilenet_v3_large": {
        "features.0.0.weight": (16, 3, 3, 3),
        "features.4.block.2.fc1.weight": (24, 72, 1, 1),
        "features.16.0.weight": (960, 160, 1, 1),
        "classifier.0.weight": (1280, 960),
        "classifier.3.weight": (1000, 1280),
    },
    "mobilenet_v3_small": {"features.1.block.1.fc2.weight": (16, 8, 1, 1), "classifier.0.weight": (1024, 576)},
    "shufflenet_v2_x1_0": {
        "conv1.0.weight": (24, 3, 3, 3),
        "stage2.0.branch1.0.weight": (24, 1, 3, 3),
        "stage2.1.branch2.0.weight": (58, 58, 1, 1),
        "conv5.0.weight": (1024, 464, 1, 1),
        "fc.weight": (1000, 1024),
    },
    "squeezenet1_1": {"features.3.expand3x3.weight": (64, 16, 3, 3), "classifier.1.weight": (1000, 512, 1, 1)},
    "mnasnet1_0": {
        "layers.0.weight": (32, 3, 3, 3),
        "layers.8.0.layers.0.weight": (48, 16, 1, 1),
        "layers.14.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    },
    "efficientnet_b0": {
        "features.0.0.weight": (32, 3, 3, 3),
        "features.1.0.block.1.fc1.weight": (8, 32, 1, 1),
        "features.2.0.block.0.1.running_mean": (96,),
        "features.8.0.weight": (1280, 320, 1, 1),
        "classifier.1.weight": (1000, 1280),
    },
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Batch-1 passes over 37 small models: on a shared 2-core machine extra threads only add overhead."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def zoo_stats():
    return {name: model_stats(entry.build(), entry.input_shape) for name, entry in ZOO.items()}


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
def test_untrained_zoo_model_runs_at_its_input_size_to_1000_finite_unequal_scores(name):
    """The architecture only, with its initial weights: says nothing of classifying. That trained weights
    classify is checked where they ship: tests/bench/test_zoo_matrix.py (the digit weights in the package, on
    held-out digits) and tests/bench/test_heldout_photos.py (MobileNetV2's ImageNet weights, on ImageNet photos)."""
    entry = ZOO[name]
    torch.manual_seed(0)
    model = entry.build().eval()
    with torch.no_grad():
        logits = model(torch.randn(entry.input_shape))
    assert logits.shape == (1, 1000)
    assert torch.isfinite(logits).all()
    assert logits.std() > 0, "every image scores the same for all classes"


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_params_and_macs_match_the_published_figures(name, zoo_stats):
    published_params, published_macs, source = PUBLISHED[name]
    stats = zoo_stats[name]
    macs_error = stats.macs / (published_macs * 1e6) - 1
    assert abs(macs_error) <= TOLERANCE, f"{name}: {stats.macs / 1e6:.1f} M MACs vs {published_macs} M ({source})"
    if published_params is not None:
        params_error = stats.params / (published_params * 1e6) - 1
        assert abs(params_error) <= TOLERANCE, f"{name}: {stats.params / 1e6:.3f} M params vs {published_params} M ({source})"


@pytest.mark.parametrize("name", sorted(TORCHVISION_PARAMS))
def test_parameter_count_equals_torchvisions(name, zoo_stats):
    assert zoo_stats[name].params == TORCHVISION_PARAMS[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION_KEYS))
def test_state_dict_keys_are_torchvisions(name):
    state = ZOO[name].build().state_dict()
    shapes = {key: tuple(state[key].shape) for key in TORCHVISION_KEYS[name] if key in state}
    assert shapes == TORCHVISION_KEYS[name]


def test_mobilenet_v1_variants_keep_their_resolution_and_weights_shape(zoo_stats):
    small = ZOO["mobilenet_v1_0_5_160"]
    assert small.input_shape == (1, 3, 160, 160)
    assert zoo_stats["mobilenet_v1_0_5_160"].final_feature_map == (512, 5, 5)
    # Resolution changes the cost, never the weights: one checkpoint serves every resolution of a width.
    assert zoo_stats["mobilenet_v1_0_5_160"].params == zoo_stats["mobilenet_v1_0_5"].params
    assert zoo_stats["mobilenet_v1_0_5_160"].macs < zoo_stats["mobilenet_v1_0_5"].macs


def test_final_feature_maps_and_receptive_fields_of_known_architectures(zoo_stats):
    assert zoo_stats["mobilenet_v2"].final_feature_map == (1280, 7, 7)
    assert zoo_stats["squeezenet1_1"].final_feature_map == (1000, 13, 13)
    # MobileNetV1: a 3x3/2 stem and 13 depthwise 3x3 layers, five of them strided: 315 pixels at stride 32.
    assert (zoo_stats["mobilenet_v1"].receptive_field, zoo_stats["mobilenet_v1"].output_stride) == (315, 32)
    # SqueezeNet 1.0: 7x7/2 conv, three 3x3/2 max pools, eight fires with one 3x3 each.
    assert (zoo_stats["squeezenet1_0"].receptive_field, zoo_stats["squeezenet1_0"].output_stride) == (155, 16)


def test_model_stats_counts_a_small_model_by_hand():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # out 8x4x4: 128 outputs x 27 = 3456 MACs, 224 params
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8),  # depthwise: 128 x 9 = 1152 MACs, 80 params
        nn.MaxPool2d(2),  # 8x2x2
        nn.Flatten(),
        nn.Linear(32, 10),  # 320 MACs, 330 params
    )
    stats = model_stats(model, (2, 3, 8, 8))
    assert stats.params == 224 + 80 + 330
    assert stats.macs == 3456 + 1152 + 320  # per image, though the batch is 2
    assert stats.final_feature_map == (8, 4, 4)
    # conv 3x3/2: 3, jump 2; dilated 3x3: + 2*2*2 = 11; the pool comes after the last conv.
    assert (stats.receptive_field, stats.output_stride) == (11, 2)
    assert stats.output_shape == (2, 10)


class _TwoStridedBranches(nn.Module):
    """Like a ShuffleNet down-sampling unit: two parallel stride-2 paths, concatenated."""

    def __init__(self):
        super().__init__()
        self.pooled = nn.AvgPool2d(3, stride=2, padding=1)
        self.convolved = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 5, stride=2, padding=2))
        self.gate = SqueezeExcitation(8, 2)
        self.head = nn.Conv2d(8, 6, 3, padding=1)

    def forward(self, x):
        return self.head(self.gate(torch.cat((self.pooled(x), self.convolved(x)), dim=1))).mean((2, 3))


def test_receptive_field_takes_the_widest_branch_once_and_ignores_global_gates():
    stats = model_stats(_TwoStridedBranches(), (1, 4, 16, 16))
    # A chain would apply both strides (jump 4); the graph applies one. Widest branch: 5x5/2 -> 5, jump 2.
    # The head 3x3 adds 2 x 2 = 4. The SE gate's 1x1 convs on the pooled vector are not the final map.
    assert (stats.receptive_field, stats.output_stride) == (9, 2)
    assert stats.final_feature_map == (6, 8, 8)


def test_models_command_prints_json_with_every_zoo_model(zoo_stats):
    completed = subprocess.run(
        [sys.executable, "-m", "exporter.cli", "models", "--json"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr
    rows = json.loads(completed.stdout)
    assert [row["name"] for row in rows] == list(ZOO)
    by_name = {row["name"]: row for row in rows}
    for name, stats in zoo_stats.items():
        assert (by_name[name]["params"], by_name[name]["macs"]) == (stats.params, stats.macs), name
    assert by_name["mobilenet_v1_0_25_128"]["input_shape"] == [1, 3, 128, 128]
