"""Selective float fallback: a model int8 cannot carry passes its gate with a few tensors kept in float."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from core.artifact import ConversionJob, OnnxModel, TensorSpec
from core.contract import InputContract
from core.parity import DEFAULT_THRESHOLDS, ParityThresholds, compare
from targets.tflite import TFLiteTarget
from targets.tflite.fallback import FallbackSteps, search
from targets.tflite.runner import LiteRTRunner
from tests.helpers import MEAN, STD, digit_photos, preprocess

CONTRACT = InputContract(input_shape=(1, 3, 32, 32), mean=MEAN, std=STD)
OFFSET = 300.0  # one channel sits this far above the others, whose values stay within a few units


class OffsetChannelNet(nn.Module):
    """A digits classifier whose last feature map carries one channel at a constant OFFSET that the
    classifier ignores (what a large BatchNorm shift on a dead channel looks like). The float function is
    the trained one; int8's one range per tensor spends its 256 levels on the offset, and the channels that
    matter are left with 1 or 2 levels."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 16, 1), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.pool(self.features(x)).flatten(1))

    def offset_one_channel(self) -> None:
        with torch.no_grad():
            last_conv = self.features[4]
            last_conv.weight[0].zero_()
            last_conv.bias[0] = OFFSET
            self.head.weight[:, 0].zero_()


@pytest.fixture(scope="module")
def offset_channel_onnx(tmp_path_factory):
    photos, labels = digit_photos(1200)
    inputs, targets = torch.from_numpy(preprocess(photos[:1000])), torch.from_numpy(labels[:1000]).long()
    torch.manual_seed(0)
    model = OffsetChannelNet()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        batch = torch.randint(0, len(inputs), (64,))
        loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval().offset_one_channel()
    path = tmp_path_factory.mktemp("offset_channel") / "model.onnx"
    torch.onnx.export(model, torch.from_numpy(preprocess(photos[:1])), str(path), input_names=["input"],
                      output_names=["output"], dynamo=False)
    held_out = preprocess(photos[1000:])
    with torch.no_grad():
        reference = model(torch.from_numpy(held_out)).numpy()
    return path, preprocess(photos[:120]), held_out, reference


def converted_int8(onnx_path, calibration, tmp_path, fallback_gate: ParityThresholds | None):
    job = ConversionJob(
        onnx=OnnxModel(onnx_path, "input", CONTRACT.input_shape, (TensorSpec("output", (1, 10)),)), contract=CONTRACT,
        calibration=calibration, workdir=tmp_path, log_path=tmp_path / "tflite.log", int8_fallback_gate=fallback_gate,
    )
    return next(a for a in TFLiteTarget().convert(job) if a.precision == "int8"), job


def float_layers(path) -> set[str]:
    """The kinds of compute op in a .tflite that read a float32 tensor (QUANTIZE/DEQUANTIZE excepted)."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    dtypes = {tensor["index"]: tensor["dtype"] for tensor in interpreter.get_tensor_details()}
    return {op["op_name"] for op in interpreter._get_ops_details()
            if op["op_name"] not in ("QUANTIZE", "DEQUANTIZE") and dtypes[op["inputs"][0]] == np.float32}


def test_int8_that_fails_its_gate_keeps_the_offset_tensors_in_float_and_passes(offset_channel_onnx, tmp_path):
    path, calibration, held_out, reference = offset_channel_onnx
    gate = DEFAULT_THRESHOLDS["int8"]

    int8, job = converted_int8(path, calibration, tmp_path, gate)

    fallback = int8.details["int8_recipe"]["float_fallback"]
    assert fallback["needed"] and fallback["before"]["failures"], fallback
    assert fallback["passed"] and 1 <= len(fallback["float_tensors"]) <= 4, fallback
    assert float_layers(int8.path) == {"FULLY_CONNECTED", "MEAN"}  # the pooled features stay float
    parity = compare(reference, LiteRTRunner(int8.path).run(held_out), gate)  # photos the export never saw
    assert parity.passed, parity.failures
    assert "tensor(s) in float" in job.log_path.read_text()  # the search shows its steps in the converter log


@pytest.fixture(scope="module")
def pure_int8(offset_channel_onnx, tmp_path_factory):
    path, calibration, _, _ = offset_channel_onnx
    int8, _ = converted_int8(path, calibration, tmp_path_factory.mktemp("pure_int8"), fallback_gate=None)
    return int8


def test_pure_int8_keeps_every_op_integer_and_lets_the_gate_fail(offset_channel_onnx, pure_int8):
    _, _, held_out, reference = offset_channel_onnx
    int8 = pure_int8

    assert int8.details["int8_recipe"]["float_fallback"].startswith("off")
    assert float_layers(int8.path) == set()
    assert not compare(reference, LiteRTRunner(int8.path).run(held_out), DEFAULT_THRESHOLDS["int8"]).passed


class FakeResult:
    """The three fields of a ParityResult the fallback search reads."""

    def __init__(self, cosine: float, threshold: float = 0.99):
        self.cosine, self.top1_agreement, self.samples = cosine, None, 8
        self.passed = cosine >= threshold
        self.failures = () if self.passed else (f"cosine {cosine} < {threshold}",)


# Scripted searches: a model is stood in for by the tuple of tensors kept float; the ops each needs are named.
OPS = {"a": ("conv_a", "pool"), "b": ("conv_b", "add"), "c": ("conv_c",)}


def scripted_steps(cosine_of_float_tensors, gains) -> FallbackSteps:
    return FallbackSteps(
        check=lambda tensors: FakeResult(cosine_of_float_tensors(tensors)),
        rank=lambda: sorted(gains.items(), key=lambda item: -item[1]),
        attempt=lambda names: tuple(names),
        float_ops=lambda names: tuple(op for name in names for op in OPS[name]),
    )


def test_a_model_that_passes_is_returned_as_it_is_and_nothing_is_ranked():
    checked, ranked = [], []
    steps = scripted_steps(lambda tensors: checked.append(tensors) or 0.995, {})
    steps = FallbackSteps(steps.check, lambda: ranked.append(True) or [], steps.attempt, steps.float_ops)

    model, record = search((), steps, progress=lambda _: None)

    assert model == () and record["needed"] is False and record["before"]["cosine"] == 0.995
    assert checked == [()] and ranked == []


def test_the_fewest_best_ranked_tensors_that_pass_are_kept_float_with_every_op_they_need():
    gains = {"a": 0.004, "b": 0.001, "c": 0.0}
    steps = scripted_steps(lambda tensors: 0.985 + sum(gains[name] for name in tensors), gains)

    model, record = search((), steps, progress=lambda _: None)

    assert record["needed"] and record["passed"]
    assert record["float_tensors"] == ["a", "b"] and model == ("a", "b")
    assert record["float_ops"] == ["conv_a", "pool", "conv_b", "add"]
    assert [entry["tensor"] for entry in record["ranked"]] == ["a", "b"]  # c gains nothing: never a candidate


def test_when_no_fallback_passes_the_plain_int8_model_is_kept_and_the_attempt_recorded():
    gains = {"a": 0.001, "b": 0.001, "c": 0.001}
    steps = scripted_steps(lambda tensors: 0.95 + 0.001 * len(tensors), gains)

    model, record = search("plain", steps, progress=lambda _: None)

    assert model == "plain"
    assert record["needed"] and not record["passed"] and record["float_tensors"] == []
    assert [attempt["float_tensors"] for attempt in record["attempts"]] == [1, 2, 3]  # each measured, for the user


def test_the_fallback_gate_reads_a_class_map_by_its_name_layout_and_pixels():
    """The recipe's gate sees the float .tflite's outputs (channels last, in LiteRT's order); with what the ONNX
    model calls them and their kind it judges a class map by its pixels, as parity will. Two close classes
    swap on 5 % of the pixels: the cosine hardly moves (0.9995 here), the pixel agreement falls to 0.95."""
    from core.parity import compare_outputs
    from targets.tflite.outputs import CHANNELS_LAST
    from targets.tflite.quantize import OutputJudging, kinds_of, named

    rng = np.random.default_rng(0)
    reference = np.zeros((4, 10, 10, 3), np.float32)  # N x H x W x classes, as LiteRT lays it out
    reference[..., 0], reference[..., 1] = 1.0, 0.98
    swapped = reference.copy()
    flipped = rng.permutation(400)[:20]
    swapped.reshape(-1, 3)[flipped, :2] = swapped.reshape(-1, 3)[flipped, 1::-1]
    gate = DEFAULT_THRESHOLDS["int8"]
    judging = OutputJudging(("mask",), ("class_map",), (CHANNELS_LAST,))
    as_the_model_says = compare_outputs(named((reference,), judging), named((swapped,), judging), gate,
                                        kinds_of(judging))
    assert list(as_the_model_says.failures) == ["pixel agreement 0.9500 < 0.98"]
    assert named((reference,), judging)["mask"].shape == (4, 3, 10, 10)
    by_shape_alone = compare_outputs(named((reference,)), named((swapped,)), gate)
    assert by_shape_alone.passed and by_shape_alone.cosine > 0.999
