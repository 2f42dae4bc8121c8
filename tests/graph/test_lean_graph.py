"""The lean-graph rewrite: channel shuffles become one Gather, and the rewritten graph computes exactly what
the original computes (ONNX Runtime, real photos)."""
from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from core.artifact import ConversionJob, OnnxModel, TensorSpec
from core.contract import InputContract
from core.pixels import center_crop
from exporter.onnx_stage import export_from_torch, simplify_and_check
from exporter.zoo import ZOO
from exporter.zoo.shufflenet_v1 import ShuffleUnit
from exporter.zoo.shufflenet_v2 import InvertedResidual
from graph.passes.lean_graph import lean_graph, with_lean_graph

SIZE = 32
CONTRACT = InputContract(input_shape=(1, 3, SIZE, SIZE), mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


class TinyShuffleNet(nn.Module):
    """A stem with a padded max pool, two ShuffleNetV2 units (stride 2 and 1), a ShuffleNetV1 unit with 3 groups,
    a zero-padded conv."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 24, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        self.v2 = nn.Sequential(InvertedResidual(24, 48, 2), InvertedResidual(48, 48, 1))
        self.v1 = ShuffleUnit(48, 48, groups=3, stride=1)
        self.padded = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(48, 16, 3, 2))
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.padded(self.v1(self.v2(self.stem(x)))).mean((2, 3)))


class PoolOfSignedValues(nn.Module):
    """A padded max pool straight after a convolution: its input can be negative, so -inf padding matters."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, 1, 1)
        self.pool = nn.MaxPool2d(3, 2, 1)

    def forward(self, x):
        return self.pool(self.conv(x) - 10.0)


class FirePool(nn.Module):
    """SqueezeNet 1.0's pattern: two ReLU branches concatenated, then a ceil-mode max pool whose last window
    runs past the border (32 -> 16 needs one more row and column)."""

    def __init__(self):
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.left, self.right = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, 1, 1)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)

    def forward(self, x):
        x = self.squeeze(x)
        return self.pool(torch.cat([torch.relu(self.left(x)), torch.relu(self.right(x))], 1))


class SpatialTranspose(nn.Module):
    """Reshape → Transpose → Reshape that swaps H and W: not a channel permutation, must stay as it is."""

    def forward(self, x):
        batch, channels, height, width = x.shape
        return x.reshape(batch, channels, height, width).transpose(2, 3).reshape(batch, channels, height, width) * 2


def _onnx_of(module: nn.Module, folder: Path, contract: InputContract = CONTRACT) -> Path:
    """The graph the pipeline hands to the targets: torch export, then onnxsim and the checker."""
    torch.manual_seed(0)
    module.eval()
    for layer in module.modules():  # non-trivial batch-norm statistics, so a wrong channel order shows
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 2.0)
    path = folder / "model.onnx"
    export_from_torch(module, contract, path, folder / "onnx.log")
    simplify_and_check(path, folder / "onnx.log")
    return path


def _photos(contract: InputContract) -> np.ndarray:
    from skimage import data

    photos = (data.astronaut(), data.coffee(), data.chelsea(), data.rocket())
    return np.stack([contract.preprocess(center_crop(photo, contract.height, contract.width)) for photo in photos])


def _run(model, samples: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: sample[None]})[0] for sample in samples])


def _op_counts(model) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


def _assert_exact(original, rewritten, contract: InputContract = CONTRACT) -> None:
    samples = _photos(contract)
    expected, actual = _run(original, samples).astype(np.float64), _run(rewritten, samples).astype(np.float64)
    cosine = (expected * actual).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(actual, axis=1)
    assert np.abs(expected - actual).max() <= 1e-6 * max(1.0, np.abs(expected).max())
    assert cosine.min() > 1 - 1e-9


def test_channel_shuffles_become_gathers_and_the_graph_stays_exact(tmp_path):
    original = onnx.load(str(_onnx_of(TinyShuffleNet(), tmp_path)))
    assert _op_counts(original)["Transpose"] == 3  # one per channel shuffle

    rewritten, report = lean_graph(original)

    counts = _op_counts(rewritten)
    assert counts["Transpose"] == 0 and counts["Reshape"] == 0
    assert report.channel_permutations == 3
    # The stride-1 V2 unit splits its input in two: those Slices read the shuffle's indices directly.
    assert report.slices_into_gathers == 2
    assert counts["Slice"] == _op_counts(original)["Slice"] - 2
    assert counts["Gather"] == 2 + 2  # the shuffles feeding no Slice stay one Gather each
    _assert_exact(original, rewritten)


def test_zero_pads_reach_the_targets_already_folded_into_the_convolution(tmp_path):
    """The ONNX stage's onnxsim folds them: no Pad node is left for onnx2tf to turn into a PAD op."""
    graph = onnx.load(str(_onnx_of(TinyShuffleNet(), tmp_path)))

    assert _op_counts(graph)["Pad"] == 0
    last_conv = [node for node in graph.graph.node if node.op_type == "Conv"][-1]
    pads = next(list(a.ints) for a in last_conv.attribute if a.name == "pads")
    assert pads == [0, 0, 1, 1]  # [top, left, bottom, right]: ZeroPad2d((0, 1, 0, 1))


def test_a_max_pool_of_relu_outputs_pads_with_zeros_instead_of_minus_infinity(tmp_path):
    original = onnx.load(str(_onnx_of(TinyShuffleNet(), tmp_path)))

    rewritten, report = lean_graph(original)

    assert report.max_pools_zero_padded == 1
    pool = next(node for node in rewritten.graph.node if node.op_type == "MaxPool")
    assert all(attribute.name != "pads" for attribute in pool.attribute)
    pad = next(node for node in rewritten.graph.node if node.output[0] == pool.input[0])
    assert pad.op_type == "Pad" and len(pad.input) == 2  # constant mode, value 0
    _assert_exact(original, rewritten)


def test_a_ceil_mode_max_pool_of_concatenated_relus_pads_with_zeros_and_keeps_its_output(tmp_path):
    original = onnx.load(str(_onnx_of(FirePool(), tmp_path)))

    rewritten, report = lean_graph(original)

    assert report.max_pools_zero_padded == 1
    pool = next(node for node in rewritten.graph.node if node.op_type == "MaxPool")
    assert {attribute.name for attribute in pool.attribute}.isdisjoint({"pads", "ceil_mode"})
    assert _run(rewritten, _photos(CONTRACT)).shape[-2:] == (16, 16)
    _assert_exact(original, rewritten)


def test_a_max_pool_of_possibly_negative_values_keeps_its_padding(tmp_path):
    original = onnx.load(str(_onnx_of(PoolOfSignedValues(), tmp_path)))

    rewritten, report = lean_graph(original)

    assert report.max_pools_zero_padded == 0 and _op_counts(rewritten)["Pad"] == 0
    _assert_exact(original, rewritten)


def test_a_transpose_that_moves_pixels_is_left_alone(tmp_path):
    original = onnx.load(str(_onnx_of(SpatialTranspose(), tmp_path)))
    assert _op_counts(original)["Transpose"] == 1

    rewritten, report = lean_graph(original)

    assert report.channel_permutations == 0 and _op_counts(rewritten)["Transpose"] == 1
    _assert_exact(original, rewritten)


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g3"])
def test_every_shuffle_of_the_zoo_shufflenets_becomes_a_gather(tmp_path, name):
    contract = InputContract(input_shape=(1, 3, 64, 64), mean=CONTRACT.mean, std=CONTRACT.std)
    original = onnx.load(str(_onnx_of(ZOO[name].build(), tmp_path, contract)))
    shuffles = _op_counts(original)["Transpose"]
    assert shuffles == 16  # one per unit: 4 + 8 + 4

    rewritten, report = lean_graph(original)

    assert report.channel_permutations == shuffles
    assert _op_counts(rewritten)["Transpose"] == 0
    _assert_exact(original, rewritten, contract)


def test_the_tflite_target_converts_a_lean_copy_and_leaves_the_original(tmp_path):
    path = _onnx_of(TinyShuffleNet(), tmp_path)
    before = path.read_bytes()
    workdir = tmp_path / "tflite"
    workdir.mkdir()
    job = ConversionJob(
        onnx=OnnxModel(path, "input", CONTRACT.input_shape, (TensorSpec("output", (1, 10)),)), contract=CONTRACT,
        calibration=_photos(CONTRACT), workdir=workdir, log_path=tmp_path / "tflite.log",
    )

    lean_job = with_lean_graph(job)

    assert path.read_bytes() == before
    assert lean_job.onnx.path.parent.parent == workdir
    assert _op_counts(onnx.load(str(lean_job.onnx.path)))["Transpose"] == 0
    assert lean_job.onnx.input_name == job.onnx.input_name and lean_job.calibration is job.calibration
    assert "3 channel shuffles as Gather" in job.log_path.read_text()


class OneShuffle(nn.Module):
    """The smallest graph with one channel shuffle: a stem and a ShuffleNetV2 down-sampling unit."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.unit = InvertedResidual(8, 16, 2)

    def forward(self, x):
        return self.unit(self.stem(x)).mean((2, 3))


def _tflite_op_counts(models: dict[str, onnx.ModelProto], folder: Path) -> dict[str, dict[str, int]]:
    """The ops of the float TFLite graph onnx2tf makes of each model (no onnxsim, as the TFLite target runs
    it), all converted in one child process: importing TensorFlow is most of the cost."""
    import os
    import subprocess
    import sys

    # onnx2tf's own sanity inference loads this file from the working folder, and downloads it when missing.
    np.save(folder / "calibration_image_sample_data_20x128x128x3_float32.npy",
            np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32))
    for label, model in models.items():
        (folder / label).mkdir()
        onnx.save(model, str(folder / label / "model.onnx"))
    script = (
        "import collections, json, sys, onnx2tf; from ai_edge_litert.interpreter import Interpreter\n"
        "for label in sys.argv[1:]:\n"
        "    onnx2tf.convert(input_onnx_file_path=f'{label}/model.onnx', output_folder_path=f'{label}/out',\n"
        "                    non_verbose=True, not_use_onnxsim=True, output_signaturedefs=True)\n"
        "    ops = Interpreter(model_path=f'{label}/out/model_float32.tflite')._get_ops_details()\n"
        "    print('OPS', label, json.dumps(collections.Counter(op['op_name'] for op in ops)))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *models], cwd=folder, capture_output=True, text=True,
                            timeout=900, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    reported = [line.split(" ", 2)[1:] for line in result.stdout.splitlines() if line.startswith("OPS ")]
    return {label: json.loads(counts) for label, counts in reported}


def test_onnx2tf_emits_no_transpose_for_a_lean_channel_shuffle(tmp_path):
    """The point of the rewrite, end to end and fast: one shuffle, before and after, through onnx2tf."""
    original = onnx.load(str(_onnx_of(OneShuffle(), tmp_path)))

    tflite_counts = _tflite_op_counts({"original": original, "lean": lean_graph(original)[0]}, tmp_path)

    assert tflite_counts["original"].get("TRANSPOSE", 0) >= 1  # what the rewrite is for: onnx2tf's shuffle
    assert tflite_counts["lean"].get("TRANSPOSE", 0) == 0
    assert tflite_counts["lean"].get("GATHER", 0) == 1


@pytest.mark.slow
def test_onnx2tf_emits_no_transpose_for_the_lean_shuffles(tmp_path):
    """The same on every kind of shuffle TinyShuffleNet has (ShuffleNetV2 units of both strides, a ShuffleNetV1
    unit of 3 groups)."""
    original = onnx.load(str(_onnx_of(TinyShuffleNet(), tmp_path)))

    tflite_counts = _tflite_op_counts({"original": original, "lean": lean_graph(original)[0]}, tmp_path)

    assert tflite_counts["original"].get("TRANSPOSE", 0) >= 3
    assert tflite_counts["lean"].get("TRANSPOSE", 0) == 0
    assert tflite_counts["lean"].get("GATHER", 0) == 4
