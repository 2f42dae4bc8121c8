"""The int8 model of a float .tflite for given ranges, and how well it does, cross-fitted on the calibration
samples: the building blocks targets/tflite/int8.py and fallback.py share."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from targets.tflite.activation_ranges import clipping_range
from targets.tflite.bias_correction import add_bias_steps, correct_biases
from targets.tflite.model_edit import EditableModel
from targets.tflite.simulator import Graph, simulate

BIAS_SAMPLES = 32  # per fold of the cross-fit, at most
RANGE_DIGITS = 6  # significant digits a range keeps: float noise (~1e-16) never crosses such a boundary


@dataclass(frozen=True)
class CrossFitted:
    """An int8 model bias-corrected on every fold, and the outputs each fold's samples get from the model
    corrected on the other fold (so no sample scores a correction it tuned), with their float reference."""

    model: bytes
    outputs: "ModelOutputs"
    reference: "ModelOutputs"

    @property
    def cosines(self) -> np.ndarray:
        return output_cosines(self.reference, self.outputs)

    def scores(self, judging: "OutputJudging | None") -> np.ndarray:
        return output_scores(self.reference, self.outputs, judging)


# The graph's outputs for a batch of samples, in the graph's order, each N x (the tensor's shape past its batch).
ModelOutputs = tuple[np.ndarray, ...]


def model_outputs(graph: Graph, samples_nhwc: np.ndarray) -> ModelOutputs:
    return per_sample(graph, simulate(graph, samples_nhwc), len(samples_nhwc))


def per_sample(graph: Graph, values: dict[int, np.ndarray], count: int) -> ModelOutputs:
    """The graph's outputs among simulated `values` of `count` samples, each N x (its shape past the batch)."""
    return tuple(values[output].reshape(count, *graph.tensors[output].shape[1:]) for output in graph.outputs)


def output_cosines(reference: ModelOutputs, outputs: ModelOutputs) -> np.ndarray:
    """Per sample, the mean over the model's outputs of each output's cosine: every output is judged on its own
    scale (boxes in pixels would drown scores in 0..1 in one cosine). One output: its cosine, exactly."""
    from core.parity import cosine_per_sample

    return np.mean([cosine_per_sample(r.reshape(len(r), -1), o.reshape(len(o), -1))
                    for r, o in zip(reference, outputs, strict=True)], axis=0)


@dataclass(frozen=True)
class OutputJudging:
    """What each output of the float .tflite is, in the model's output order: its ONNX name, its kind
    (core/output_kinds.py) and its layout (targets/tflite/outputs.py), so the int8 recipe's gate judges it as
    parity will: a class map by its pixels, boxes by their IoU, logits by top-1."""

    names: tuple[str, ...]
    kinds: tuple[str, ...]
    layouts: tuple[str, ...]


def named(outputs: ModelOutputs, judging: OutputJudging | None = None) -> dict[str, np.ndarray]:
    """The outputs as core.parity.compare_outputs takes them: by their ONNX names in the ONNX layout when
    `judging` says them, else as "output k" as they are."""
    from targets.tflite.outputs import channels_first

    if judging is None:
        return {f"output {index}": values for index, values in enumerate(outputs)}
    return {name: channels_first(values, layout) for name, values, layout in zip(judging.names, outputs,
                                                                                   judging.layouts, strict=True)}


def output_scores(reference: ModelOutputs, outputs: ModelOutputs, judging: OutputJudging | None) -> np.ndarray:
    """Per sample, the mean over the outputs of each output's own figure: its kind's where that is a measure per
    sample (core.output_kinds.figure_per_sample: a class map's pixel agreement, boxes' IoU), else its cosine.
    What the recipe's choices (range method, bias correction, the fallback's ranking) compare."""
    from core.output_kinds import figure_per_sample
    from core.parity import cosine_per_sample

    if judging is None or score_label(judging) == "cosine":
        return output_cosines(reference, outputs)
    expected, found = named(reference, judging), named(outputs, judging)
    per_output = []
    for name, kind in zip(judging.names, judging.kinds, strict=True):
        figure = figure_per_sample(kind, expected[name], found[name])
        if figure is None:
            samples = len(expected[name])
            figure = cosine_per_sample(expected[name].reshape(samples, -1), found[name].reshape(samples, -1))
        per_output.append(figure)
    return np.mean(per_output, axis=0)


def score_label(judging: OutputJudging | None) -> str:
    """"cosine" when every output is scored by its cosine, else "score" (outputs by their kinds' figures)."""
    from core.output_kinds import PER_SAMPLE_FIGURE

    return "score" if any(kind in PER_SAMPLE_FIGURE for kind in (judging.kinds if judging else ())) else "cosine"


def kinds_of(judging: OutputJudging | None) -> dict[str, str] | None:
    return None if judging is None else dict(zip(judging.names, judging.kinds, strict=True))


def _joined(per_fold: list[ModelOutputs]) -> ModelOutputs:
    return tuple(np.concatenate(parts) for parts in zip(*per_fold))


@dataclass(frozen=True)
class Activations:
    """What the ranges are chosen from: each activation's (min, max) over every calibration sample (zero inside),
    and its histogram over `bins`, a span fixed before the pass (values beyond it count in its edge bins)."""

    spans: dict[int, tuple[float, float]]
    bins: dict[int, tuple[float, float]]
    histograms: dict[int, np.ndarray]


def ranges_for(method: str, graph: Graph, activations: Activations) -> dict[str, tuple[float, float]]:
    """{tensor name: (low, high)} for the method, rounded to RANGE_DIGITS significant digits. The model's outputs
    keep their whole range: a clipping method cuts a classifier's largest logits, the answer itself, into ties
    (on MobileNetV2, mse-clipped logits changed the top-1 class of 0.13 of held-out crops, min/max of 0.05)."""
    outputs = set(graph.outputs)
    found = {}
    for tensor, span in activations.spans.items():
        counts = activations.histograms.get(tensor)
        clipped = counts is not None and counts.sum() and tensor not in outputs
        low, high = clipping_range(method, counts, *span, bins=activations.bins[tensor]) if clipped else span
        found[graph.tensors[tensor].name] = (_significant(low), _significant(high))
    return found


def _significant(value: float) -> float:
    return float(f"{value:.{RANGE_DIGITS}g}")


def write_int8(float_model: bytes, ranges: dict[str, tuple[float, float]], int8_io: bool,
               float_ops: tuple[str, ...] = ()) -> bytes:
    """TensorFlow's quantizer on the float model with our ranges written where its calibration would write
    them; `float_ops` (named by their first output tensor) stay float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tflite_convert
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python.optimize import calibrator
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(
        bytearray(calibrator.add_intermediate_tensors(float_model)))
    for tensor in model.subgraphs[0].tensors:
        name = tensor.name.decode() if isinstance(tensor.name, bytes) else tensor.name
        if name in ranges:
            if tensor.quantization is None:
                tensor.quantization = schema.QuantizationParametersT()
            tensor.quantization.min, tensor.quantization.max = [ranges[name][0]], [ranges[name][1]]
    calibrated = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    io_type = tf.int8 if int8_io else tf.float32
    return tflite_convert.mlir_quantize(calibrated, disable_per_channel=False, input_data_type=io_type,
                                        output_data_type=io_type, denylisted_nodes=list(float_ops) or None)


@dataclass(frozen=True)
class Folds:
    """The calibration samples in two halves, with what scoring and bias correction need of each:
    the float model's outputs (the reference) and its weighted layers' outputs (measured once, for every
    candidate model)."""

    samples: tuple[np.ndarray, np.ndarray]
    reference: tuple[ModelOutputs, ModelOutputs]
    layer_outputs: tuple[list[np.ndarray], list[np.ndarray]] | None


def fold_positions(count: int) -> tuple[np.ndarray, np.ndarray]:
    """The samples of each fold: the first and the second half of the calibration samples, at most BIAS_SAMPLES
    of each, spread over it. Calibration views come photo by photo, so the halves hold different photos, and a
    score on the other half is a score on photos the correction never saw (interleaved halves shared every
    photo: cross-fitted cosine 0.9987 where new photos gave 0.9948)."""
    half = count // 2
    return spread_positions(0, half, BIAS_SAMPLES), spread_positions(half, count, BIAS_SAMPLES)


def folds_of(calibration_nhwc: np.ndarray, reference: ModelOutputs, layer_outputs: dict | None) -> Folds:
    """`layer_outputs`: {weighted op: float outputs of the fold samples, fold 0's then fold 1's} or None."""
    positions = fold_positions(len(calibration_nhwc))
    samples = tuple(calibration_nhwc[p] for p in positions)
    references = tuple(tuple(output[p] for output in reference) for p in positions)
    layers = None
    if layer_outputs is not None:
        first = len(positions[0])
        ordered = [layer_outputs[op] for op in sorted(layer_outputs)]
        layers = ([np.stack(outputs[:first]) for outputs in ordered], [np.stack(outputs[first:]) for outputs in ordered])
    return Folds(samples, references, layers)


def spread_positions(start: int, stop: int, count: int) -> np.ndarray:
    """At most `count` indices spread evenly over start..stop-1: calibration views come photo by photo, so these
    are views of every photo, not the first photo's."""
    return np.unique(np.linspace(start, stop - 1, min(count, stop - start)).round().astype(int))


def scored(quantized: bytes, folds: Folds) -> CrossFitted:
    """The int8 model as it is, scored on both folds (nothing tuned on either)."""
    graph = Graph(quantized)
    outputs = [model_outputs(graph, folds.samples[fold]) for fold in (1, 0)]
    return CrossFitted(quantized, _joined(outputs), _joined([folds.reference[1], folds.reference[0]]))


def cross_fitted(quantized: bytes, folds: Folds) -> CrossFitted:
    """Each fold's bias correction scored on the other fold; the model returned carries the mean of the two
    folds' corrections (rounded to whole steps), which neither fold's score favours."""
    outputs, corrections = [], []
    for tuned, scored_fold in ((0, 1), (1, 0)):
        model = EditableModel(quantized)
        corrections.append(correct_biases(model, folds.samples[tuned], folds.layer_outputs[tuned]))
        outputs.append(model_outputs(Graph(model.to_bytes()), folds.samples[scored_fold]))
    final = EditableModel(quantized)
    add_bias_steps(final, _mean_steps(corrections))
    return CrossFitted(final.to_bytes(), _joined(outputs), _joined([folds.reference[1], folds.reference[0]]))


def _mean_steps(corrections: list[dict]) -> dict:
    tensors = set().union(*corrections)
    return {tensor: np.round(sum(c.get(tensor, 0) for c in corrections) / len(corrections)).astype(np.int64)
            for tensor in tensors}


def float_ops_for(graph: Graph, tensor_names: list[str]) -> tuple[str, ...]:
    """The ops that run in float to keep the named tensors float: each tensor's writer and readers, named by
    their first output as mlir_quantize's denylist wants."""
    by_name = {info.name: info.index for info in graph.tensors}
    names = {info.index: info.name for info in graph.tensors}
    ops = []
    for name in tensor_names:
        tensor = by_name[name]
        ops += [names[op.outputs[0]] for op in graph.ops if tensor in op.outputs or tensor in op.inputs]
    return tuple(dict.fromkeys(ops))


def with_writer_inputs(graph: Graph, tensor_names: list[str]) -> list[str]:
    """The tensors and the activations their writing ops read: kept float together, the op that joins them (the
    CONCATENATION of boxes and scores) gets inputs at their own int8 scales, not requantized to one shared scale
    (the quantizer gives a concatenation's inputs its output's scale)."""
    by_name = {info.name: info.index for info in graph.tensors}
    found = list(tensor_names)
    for name in tensor_names:
        writer = next(op for op in graph.ops if by_name[name] in op.outputs)
        found += [graph.tensors[index].name for index in writer.inputs
                  if index >= 0 and graph.tensors[index].constant is None]
    return list(dict.fromkeys(found))


def mixed_range_outputs(graph: Graph, reference: ModelOutputs) -> dict[str, str]:
    """{output tensor: why} for the graph's outputs whose fields (last axis of N x anchors x fields) are too far
    apart for one int8 scale (core.parity.mixed_range_fields): boxes in pixels next to scores in 0..1."""
    from core.parity import MIXED_RANGE_STEPS, mixed_range_fields

    found = {}
    for tensor, values in zip(graph.outputs, reference):
        mixed = mixed_range_fields(values)
        if mixed is not None:
            field, spread, step = mixed
            found[graph.tensors[tensor].name] = (f"field {field} of its last axis spreads {spread:.3g}, less than "
                                                 f"{MIXED_RANGE_STEPS} steps ({step:.3g}) of one int8 scale over the "
                                                 "whole tensor: kept in float")
    return found
