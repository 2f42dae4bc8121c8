"""The reference ML Program evaluator, op by op: against coremltools' own op semantics, and against torch.

coremltools computes an op's value itself when every input is a constant (value inference, used for
constant folding); where it can (elementwise, reductions, reshapes, splits, casts) that is the reference.
Convolutions and pools have no value inference: a torch layer is converted to an ML Program, saved, and
the evaluator's run of the saved program must match the torch layer. Compressed weights are checked against
coremltools' own decompression of the same program.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from targets.coreml.mil_reference import OPS, UnverifiedOp, _Execution, load_program
from targets.coreml.tools import import_coremltools

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 6, 5, 5)).astype(np.float32) * 4

# "op [variant]" -> inputs, for ops coremltools can evaluate on constants.
VALUE_INFERENCE_CASES = {
    "thresholded_relu": dict(x=X, alpha=np.float32(-3.0)),
    "sigmoid_hard": dict(x=X, alpha=np.float32(1 / 6), beta=np.float32(0.5)),
    "clip": dict(x=X, alpha=np.float32(0.0), beta=np.float32(6.0)),
    "relu": dict(x=X),
    "relu6": dict(x=X),
    "sigmoid": dict(x=X),
    "softmax": dict(x=X, axis=np.int32(1)),
    "reduce_mean": dict(x=X, axes=np.array([-2, -1], np.int32), keep_dims=True),
    "mul": dict(x=X, y=X[:, :, :1, :1]),
    "add": dict(x=X, y=np.float32(2.5)),
    "real_div": dict(x=X, y=np.float32(3.0)),
    "concat": dict(values=[X, X[:, :2]], axis=np.int32(1)),
    "split": dict(x=X, axis=np.int32(1), num_splits=np.int32(3)),
    "transpose": dict(x=X, perm=np.array([0, 2, 3, 1], np.int32)),
    # ShuffleNet's channel shuffle: (N, groups, C/groups, H, W) -> swap the two channel axes -> back.
    "reshape": dict(x=X, shape=np.array([2, 3, 2, 25], np.int32)),
    "slice_by_index": dict(x=X, begin=np.array([0, 1, 0, 1], np.int32), end=np.array([2, 5, 5, 5], np.int32),
                           stride=np.array([1, 2, 1, 2], np.int32)),
    "linear": dict(x=X[:, :, 0, 0], weight=RNG.standard_normal((4, 6)).astype(np.float32),
                   bias=RNG.standard_normal(4).astype(np.float32)),
    "cast": dict(x=X * 1000.1, dtype="fp16"),
}


def _coremltools_value(op_type: str, inputs: dict):
    import_coremltools()
    from coremltools.converters.mil import Builder as mb

    captured = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))])
    def program(unused):
        outputs = getattr(mb, op_type)(**inputs)
        captured["values"] = [o.val for o in outputs] if isinstance(outputs, (list, tuple)) else [outputs.val]
        return unused

    assert all(value is not None for value in captured["values"]), f"coremltools cannot evaluate {op_type} here"
    return captured["values"]


def _as_torch(value):
    if isinstance(value, list):
        return [_as_torch(item) for item in value]
    if isinstance(value, (np.ndarray, np.generic)):
        return torch.from_numpy(np.asarray(value).copy())
    return value


@pytest.mark.parametrize("case", sorted(VALUE_INFERENCE_CASES))
def test_op_matches_coremltools_own_value_inference(case):
    inputs = VALUE_INFERENCE_CASES[case]
    op_type = case.split()[0]
    expected = _coremltools_value(op_type, inputs)
    ours = OPS[op_type](**{key: _as_torch(value) for key, value in inputs.items()})
    ours = ours if isinstance(ours, tuple) else (ours,)
    assert len(ours) == len(expected)
    for mine, theirs in zip(ours, expected):
        theirs = np.asarray(theirs)
        assert tuple(mine.shape) == theirs.shape
        np.testing.assert_allclose(mine.float().numpy(), theirs.astype(np.float32), rtol=1e-6, atol=1e-6)


def _channel_shuffle(x, groups=3):
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class _SqueezeExcite(nn.Module):
    """MobileNetV3's block: hard-swish, a pooled gate through hard-sigmoid, multiplied back."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(6, 3, 1), nn.Conv2d(3, 6, 1)

    def forward(self, x):
        x = nn.functional.hardswish(x)
        gate = nn.functional.hardsigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * gate


class _Lambda(nn.Module):
    def __init__(self, function):
        super().__init__()
        self.function = function

    def forward(self, x):
        return self.function(x)


def _has(*op_types: str):
    return lambda operations: any(operation.type in op_types for operation in operations)


def _interleaved_concat(operations) -> bool:
    """coremltools fuses concat + channel shuffle into concat(interleave=True), which its own value
    inference ignores (it concatenates plainly), so only the torch layer can be the reference for it."""
    constants = {operation.outputs[0].name: operation.attributes["val"] for operation in operations
                 if operation.type == "const"}

    def flag(binding) -> bool:
        value = constants[binding.name] if binding.WhichOneof("binding") == "name" else binding.value
        return bool(_Execution.immediate(value))

    return any(operation.type == "concat" and "interleave" in operation.inputs
               and flag(operation.inputs["interleave"].arguments[0]) for operation in operations)


# name -> (layer, what the converted program must contain for the case to test what it names)
TORCH_CASES = {
    "grouped strided conv": (lambda: nn.Conv2d(6, 12, 3, stride=2, padding=1, groups=3), _has("conv")),
    "depthwise dilated conv": (lambda: nn.Conv2d(6, 6, 3, padding=2, dilation=2, groups=6), _has("conv")),
    "max pool ceil_mode (SqueezeNet)": (lambda: nn.MaxPool2d(3, 2, ceil_mode=True), _has("max_pool")),
    "max pool padded (ShuffleNet stem)": (lambda: nn.MaxPool2d(3, 2, padding=1), _has("max_pool")),
    "avg pool padded (ShuffleNetV1 shortcut)": (lambda: nn.AvgPool2d(3, 2, padding=1), _has("avg_pool")),
    "squeeze-excite with hard-swish": (_SqueezeExcite, _has("thresholded_relu")),
    "silu (EfficientNet)": (nn.SiLU, _has("silu")),
    "relu6": (nn.ReLU6, _has("clip")),
    "channel shuffle (ShuffleNetV1)": (lambda: _Lambda(_channel_shuffle), _has("transpose")),
    "split and concat": (lambda: _Lambda(lambda x: torch.cat(x.chunk(2, dim=1)[::-1], dim=1)), _has("split")),
    "bilinear upsampling by 8 (LR-ASPP)": (
        lambda: _Lambda(lambda x: nn.functional.interpolate(x, scale_factor=8, mode="bilinear",
                                                            align_corners=False)), _has("upsample_bilinear")),
    "bilinear resize to a whole multiple of the size (LR-ASPP)": (
        lambda: _Lambda(lambda x: nn.functional.interpolate(x, size=(22, 33), mode="bilinear",
                                                            align_corners=False)), _has("upsample_bilinear", "resize_bilinear")),
    "concat then channel shuffle (ShuffleNetV2)": (
        lambda: _Lambda(lambda x: _channel_shuffle(torch.cat([x, torch.relu(x)], dim=1), groups=2)),
        _interleaved_concat),
}


def _convert_and_save(module: nn.Module, shape: tuple[int, ...], path: Path, compute_precision: str = "FLOAT32"):
    ct = import_coremltools()
    traced = torch.jit.trace(module.eval(), torch.zeros(shape))
    model = ct.convert(traced, inputs=[ct.TensorType(name="x", shape=shape)], outputs=[ct.TensorType(name="y")],
                       convert_to="mlprogram", minimum_deployment_target=ct.target.iOS16,
                       compute_precision=getattr(ct.precision, compute_precision))
    model.save(str(path))
    return model


@pytest.mark.parametrize("name", sorted(TORCH_CASES))
def test_converted_torch_layer_runs_like_torch(name, tmp_path):
    build, contains_what_it_tests = TORCH_CASES[name]
    torch.manual_seed(0)
    module = build().eval()
    x = torch.from_numpy(RNG.standard_normal((1, 6, 11, 11)).astype(np.float32) * 4)
    _convert_and_save(module, tuple(x.shape), tmp_path / "layer.mlpackage")
    program = load_program(tmp_path / "layer.mlpackage")
    assert contains_what_it_tests(program.operations), program.op_counts
    with torch.no_grad():
        expected = module(x).numpy()
    np.testing.assert_allclose(program.run({"x": x.numpy()})["y"], expected, rtol=1e-5, atol=1e-5)


def _dense_constants(path: Path) -> dict[str, np.ndarray]:
    """The evaluator's decompressed value of every constexpr op in the saved package, by output name."""
    program = load_program(path)
    execution = _Execution(program)
    values = {}
    for operation in program.operations:
        if operation.type.startswith("constexpr_"):
            execution._execute(operation)
            values[operation.outputs[0].name] = execution.values[operation.outputs[0].name].float().numpy()
    return values


@pytest.mark.parametrize("compression", ["int8", "palette6"])
def test_compressed_weights_decompress_as_coremltools_does(compression, tmp_path):
    from coremltools.optimize import coreml as optimize

    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(6, 64, 3), nn.ReLU(), nn.Conv2d(64, 40, 3, groups=2), nn.Flatten(), nn.LazyLinear(5))
    module(torch.zeros(1, 6, 9, 9))
    model = _convert_and_save(module, (1, 6, 9, 9), tmp_path / "fp16.mlpackage", "FLOAT16")
    if compression == "int8":
        config = optimize.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                                  weight_threshold=512)
        compressed, op_type = optimize.linear_quantize_weights(model, optimize.OptimizationConfig(config)), \
            "constexpr_affine_dequantize"
    else:
        config = optimize.OpPalettizerConfig(mode="kmeans", nbits=6, weight_threshold=512)
        compressed, op_type = optimize.palettize_weights(model, optimize.OptimizationConfig(config)), \
            "constexpr_lut_to_dense"
    compressed.save(str(tmp_path / "compressed.mlpackage"))
    theirs = {op.outputs[0].name: op.materialized_val_inference()
              for op in compressed._mil_program.functions["main"].operations if op.op_type == op_type}
    ours = _dense_constants(tmp_path / "compressed.mlpackage")
    assert len(theirs) == 3 and set(theirs) == set(ours)  # both convolutions and the linear layer
    for name, dense in theirs.items():
        np.testing.assert_array_equal(ours[name], np.asarray(dense, dtype=np.float32))
    if compression == "palette6":
        assert all(len(np.unique(dense)) <= 64 for dense in ours.values())


def test_a_grouped_look_up_table_is_not_verified():
    lut = torch.zeros((2, 1, 64, 1))
    with pytest.raises(UnverifiedOp, match="not verified: op constexpr_lut_to_dense"):
        OPS["constexpr_lut_to_dense"](indices=torch.zeros(48, dtype=torch.uint8), lut=lut,
                                      shape=torch.tensor([8, 8], dtype=torch.int32))


def test_classify_returns_the_top_label_and_the_raw_scores():
    scores = torch.tensor([[0.5, -2.0, 3.0]])
    label, returned = OPS["classify"](probabilities=scores, classes=["cat", "dog", "fish"])
    assert label == "fish"
    assert torch.equal(returned, scores)  # no softmax: the dictionary holds the model's own outputs


def test_activation_quantize_matches_coremltools_and_dequantize_undoes_it():
    """iOS 17's quantize / dequantize pair (W8A8 packages): quantize against coremltools' own value inference, per
    tensor and per channel; dequantize (no value inference there) against its definition."""
    ct = import_coremltools()
    from coremltools.converters.mil import Builder as mb

    channel_scales, channel_zero_points = np.linspace(0.02, 0.1, 6).astype(np.float32), np.full(6, 100, np.uint8)
    captured = {}

    @mb.program(input_specs=[mb.TensorSpec(shape=(1,))], opset_version=ct.target.iOS17)
    def program(unused):
        captured["tensor"] = mb.quantize(input=X, scale=np.float32(0.05), zero_point=np.int8(3), output_dtype="int8").val
        captured["channel"] = mb.quantize(input=X, scale=channel_scales, zero_point=channel_zero_points, axis=1,
                                          output_dtype="uint8").val
        return unused

    ours = OPS["quantize"](input=torch.from_numpy(X), scale=torch.tensor(0.05), zero_point=torch.tensor(3, dtype=torch.int8),
                           output_dtype="int8")
    assert ours.dtype == torch.int8 and np.array_equal(ours.numpy(), captured["tensor"])
    ours = OPS["quantize"](input=torch.from_numpy(X), scale=torch.from_numpy(channel_scales), axis=torch.tensor(1),
                           zero_point=torch.from_numpy(channel_zero_points), output_dtype="uint8")
    assert ours.dtype == torch.uint8 and np.array_equal(ours.numpy(), captured["channel"])
    back = OPS["dequantize"](input=torch.from_numpy(captured["channel"]), scale=torch.from_numpy(channel_scales),
                             zero_point=torch.from_numpy(channel_zero_points), axis=torch.tensor(1))
    step = channel_scales.reshape(1, -1, 1, 1)
    inside = (X > -100 * step) & (X < 155 * step)  # values the uint8 range holds come back within half a step
    half_step = np.broadcast_to(step / 2, X.shape)
    assert inside.mean() > 0.5 and np.all(np.abs(back.numpy() - X)[inside] <= half_step[inside] * (1 + 1e-5))
    np.testing.assert_allclose(back.numpy(), (captured["channel"].astype(np.float32) - 100) * step, rtol=1e-6)
