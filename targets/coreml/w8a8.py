"""Core ML W8A8: int8 weights and 8-bit activations, an ML Program for iOS 17+ (quantize/dequantize pairs around
convolutions, linear layers, pools and additions, which newer Neural Engines run in int8).

coremltools' `linear_quantize_activations` calibrates by running the package with `MLModel.predict`, which only
macOS has. Here the calibration runs in the reference evaluator (mil_reference.py) on the export's calibration
photos, with the activation-range rule ncnn int8 shares (graph/activation_ranges.py, affine: both tails), and
coremltools' own graph passes then insert the pairs with those ranges; weights as the int8 package has them.

One change to what coremltools would do: a convolution, linear layer or addition whose only reader is a ReLU or
ReLU6 (clip) gets its reader's range. coremltools quantizes such an output before the activation, with a range
stretched by values the activation then discards, and once more after it; TFLite and the Neural Engine fuse the
two. On MobileNetV2 (150 held-out crops, ranges from 24 calibration samples) this took cosine from 0.9885 to 0.9953. And the ops that compute the
model's answers (whose results reach an output through casts or a classifier's label lookup only) keep float
outputs: 8-bit logits tie (a classifier's top-1 agreement fell to 0.29 when they were quantized).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from graph import activation_ranges
from targets.coreml.mil_reference import load_program
from targets.coreml.preprocessing import INPUT_NAME

W8A8_PRECISION = "w8a8"
MINIMUM_DEPLOYMENT_TARGET = "iOS17"  # the first with activation quantize/dequantize ops
ACTIVATION_MODE = "linear"  # affine: a ReLU6 output keeps all 256 levels (symmetric: 0.9910 against 0.9953)
FUSED_ACTIVATIONS = ("relu", "relu6", "clip")
ZERO_TENSOR_HIGH = 2.0**-8
PASS_THROUGH = ("cast", "classify", "identity")  # between the ops that compute the answers and the outputs
RANGE_DESCRIPTION = f"per activation, affine: {activation_ranges.DESCRIPTION}, of each tail"


def activation_quantized(ct, fp16_ios17, calibration_pixels: np.ndarray, scratch: Path, weight_config):
    """The W8A8 model of a float16 ML Program converted for iOS 17: activation pairs with ranges calibrated on
    `calibration_pixels` (N x C x H x W pixel values), then int8 weights by `weight_config`."""
    from coremltools.converters.mil.frontend.milproto import load as milproto_load
    from coremltools.converters.mil.mil.passes.graph_pass import PassOption
    from coremltools.converters.mil.mil.passes.pass_registry import PASS_REGISTRY
    from coremltools.models import utils as model_utils
    from coremltools.optimize import coreml as optimize

    package = scratch / "calibration.mlpackage"
    fp16_ios17.save(str(package))
    # Every calibration sample (the reference evaluator runs MobileNetV2 in ~0.3 s a sample here): the export's
    # samples come photo by photo, and the first 32 alone gave ranges of 4 photos (held-out cosine 0.9912 against
    # 0.9951 with all 120).
    program = load_program(package)
    statistics = activation_statistics(program, calibration_pixels)
    config = optimize.OptimizationConfig(global_config=optimize.OpLinearQuantizerConfig(mode=ACTIVATION_MODE),
                                         op_name_configs={name: None for name in answer_ops(program)})
    # The passes linear_quantize_activations applies, in its order, given our statistics (its own calibration
    # needs MLModel.predict).
    passes = []
    for name in ("compression::insert_prefix_quantize_dequantize_pair",
                 "compression::insert_suffix_quantize_dequantize_pair"):
        graph_pass = PASS_REGISTRY[name]
        graph_pass.set_options([PassOption("config", config)])
        graph_pass.set_options([PassOption("activation_stats", statistics)])
        passes.append(graph_pass)
    passes.append(PASS_REGISTRY["common::dequantize_quantize_pair_elimination"])
    activations = model_utils._apply_graph_pass(fp16_ios17, passes, spec_version=ct.target.iOS17,
                                                pymil_load_func=milproto_load.load, skip_model_load=True)
    return optimize.linear_quantize_weights(activations, weight_config)


def activation_statistics(program, calibration_pixels: np.ndarray) -> dict[str, dict[str, float]]:
    """{tensor name: {"rmin", "rmax"}} for every tensor an op of the program (mil_reference.load_program) computes,
    outputs excepted, as coremltools' passes read them; concatenated tensors share one range, as coremltools makes
    them."""
    computed = {result.name for operation in program.operations if operation.type != "const"
                and not operation.type.startswith("constexpr_") for result in operation.outputs}
    computed -= set(program.output_names)
    lows: dict[str, list[float]] = defaultdict(list)
    highs: dict[str, list[float]] = defaultdict(list)
    for sample in calibration_pixels:
        for name, value in program.all_values({INPUT_NAME: sample[None]}).items():
            if name not in computed or not isinstance(value, np.ndarray) or not np.issubdtype(value.dtype, np.floating):
                continue
            low, high = activation_ranges.sample_bounds(value)
            lows[name].append(low)
            highs[name].append(high)
    # A tensor that is zero on every photo still needs a scale (coremltools refuses 0): any scale keeps its zeros.
    statistics = {name: {"rmin": activation_ranges.calibrated(lows[name]),
                         "rmax": activation_ranges.calibrated(highs[name]) or ZERO_TENSOR_HIGH} for name in lows}
    _fuse_activations(program, statistics)
    _share_concat_ranges(program, statistics)
    return statistics


def answer_ops(program) -> set[str]:
    """The names of the ops whose results reach a program output through PASS_THROUGH ops only."""
    producers = {result.name: operation for operation in program.operations for result in operation.outputs}
    pending, answers, seen = list(program.output_names), set(), set()
    while pending:
        operation = producers.get(pending.pop())
        if operation is None or id(operation) in seen:
            continue
        seen.add(id(operation))
        if operation.type in PASS_THROUGH:
            pending += [binding.name for argument in operation.inputs.values() for binding in argument.arguments
                        if binding.WhichOneof("binding") == "name"]
        elif operation.type != "const":
            answers.add(operation.attributes["name"].immediateValue.tensor.strings.values[0])
    return answers


def _readers(program) -> dict[str, list]:
    readers = defaultdict(list)
    for operation in program.operations:
        for argument in operation.inputs.values():
            for binding in argument.arguments:
                if binding.WhichOneof("binding") == "name":
                    readers[binding.name].append(operation)
    return readers


def _fuse_activations(program, statistics: dict) -> None:
    readers = _readers(program)
    for operation in program.operations:
        if operation.type not in FUSED_ACTIVATIONS:
            continue
        source, result = operation.inputs["x"].arguments[0].name, operation.outputs[0].name
        if len(readers[source]) == 1 and source in statistics and result in statistics:
            statistics[source] = dict(statistics[result])


def _share_concat_ranges(program, statistics: dict) -> None:
    from coremltools.optimize.coreml.experimental._post_training_quantization import (
        _adjust_concat_surrounding_activation_stats,
    )

    groups = [[binding.name for binding in operation.inputs["values"].arguments if binding.name]
              + [operation.outputs[0].name] for operation in program.operations if operation.type == "concat"]
    _adjust_concat_surrounding_activation_stats(groups or None, statistics)
