"""Full-integer int8 from a float .tflite, every decision made in the deterministic simulator.

The recipe, in order (each step can be turned off in `RecipeSteps`; bench/int8_suite.py measures what each
step is worth on real models it was not tuned on, and a step stays only when it helps them all):
1. Hessian-aware rounding of convolution weights onto the int8 grid (targets/tflite/rounding.py);
2. activation ranges per tensor from the calibration samples, by one or more methods
   (targets/tflite/activation_ranges.py), written into the model TensorFlow's quantizer (mlir_quantize) turns
   into int8;
3. empirical bias correction (targets/tflite/bias_correction.py), kept only when it leads the uncorrected model
   on photos it was not tuned on;
4. when a gate is given and the int8 model fails it on the calibration samples, the few activation tensors
   that cost the most are kept in float (targets/tflite/fallback.py).
Range equalization (scaling channels between ReLU6 layers) is not a step any more: calibrated on 6 photos it
took EfficientNet-Lite1 to cosine 0.898 on new photos (bench/int8_suite.py).

Every statistic, score and correction comes from targets/tflite/simulator.py in float64 and is rounded before
it reaches a byte (ranges to quantize.RANGE_DIGITS significant digits, weights to int8 levels, biases to whole
steps), so float noise of ~1e-16 cannot move one: the same inputs give the same int8 file on any machine and
thread count. TensorFlow is used only to write the model (mlir_quantize is deterministic given the model and
its ranges).

Decisions use every calibration sample by cross-fitting: the samples are split into two halves holding
different photos, each half's bias correction is scored on the other half, so every score is on photos the
scored model was not tuned on.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from core.parity import ParityThresholds
from targets.tflite.activation_ranges import clear_winner, describe_choice
from targets.tflite.child_log import log, phase
from targets.tflite.fallback import keep_sensitive_tensors_float
from targets.tflite.model_edit import EditableModel
from targets.tflite.quantize import (
    Activations,
    CrossFitted,
    ModelOutputs,
    OutputJudging,
    cross_fitted,
    fold_positions,
    float_ops_for,
    folds_of,
    mixed_range_outputs,
    per_sample,
    ranges_for,
    score_label,
    scored,
    spread_positions,
    with_writer_inputs,
    write_int8,
)
from targets.tflite.rounding import round_weights, roundable_ops
from targets.tflite.simulator import WEIGHTED_KINDS, Graph
from targets.tflite.statistics import Statistics, activation_tensors, measure

ROUNDING_SAMPLES = 32  # H = E[patch patchᵀ] of every convolution
MEASURED, ALWAYS, NEVER = "measured", "always", "never"  # the ways bias correction can be asked for


@dataclass(frozen=True)
class RecipeSteps:
    round_weights: bool = True
    # Several: chosen by cross-fitted score, the first preferred on a tie; one: fixed. Neither mse nor percentile
    # wins everywhere: on the default export's held-out crops percentile gave cosine 0.993303 against mse's
    # 0.990832 (cross-fit 0.991932 against 0.986314, so it is chosen), on EfficientNet-Lite1 they tie (0.995259,
    # 0.995304; cross-fit too, so mse stays). min/max trailed both on every model measured.
    range_methods: tuple[str, ...] = ("mse", "percentile")
    # "measured": applied only when its cross-fitted lead over the uncorrected model is clear; "always"; "never".
    bias_correction: str = MEASURED


@dataclass(frozen=True)
class Candidate:
    method: str  # activation range method
    bias_corrected: bool
    result: CrossFitted

    @property
    def name(self) -> str:
        return self.method + (" + bias correction" if self.bias_corrected else "")


def quantize_int8(float_model: bytes, calibration_nhwc: np.ndarray, int8_io: bool, gate: ParityThresholds | None,
                  steps: RecipeSteps = RecipeSteps(), threads: int = 2,
                  judging: OutputJudging | None = None) -> tuple[bytes, dict]:
    """The int8 model and the record of how it was made (for the manifest's details.int8_recipe). `threads`
    changes how fast, never what: the simulator's figures are rounded before anything is written. `judging`:
    what each output is, for the fallback's gate (None: every output judged as its shape suggests)."""
    import torch

    torch.set_num_threads(threads)
    record: dict = {"steps": asdict(steps), "calibration_samples": int(len(calibration_nhwc))}
    measured = _measure_float_model(float_model, calibration_nhwc, steps)
    ready, preparation = _rounded(float_model, measured.statistics.hessians, steps)
    record.update(preparation)
    ready_graph = Graph(ready)
    # An output mixing ranges (boxes and scores in one tensor) cannot share one int8 scale: it stays float, and
    # so does the op writing it (its inputs keep their own int8 scales).
    mixed = mixed_range_outputs(ready_graph, measured.reference)
    kept_float = with_writer_inputs(ready_graph, list(mixed))
    always_float = float_ops_for(ready_graph, kept_float)
    if mixed:
        record["float_outputs"] = [{"tensor": name, "why": why} for name, why in mixed.items()]
        log(f"int8: keeping {', '.join(mixed)} in float ({'; '.join(mixed.values())})")
    folds = folds_of(calibration_nhwc, measured.reference,
                     measured.statistics.layer_outputs if steps.bias_correction != NEVER else None)
    # First the range method, on the plain int8 models; then bias correction, for that method's model only.
    # In the order preferred on a tie: a later method or an extra step stays only when its lead is clear.
    plain = {}
    for method in steps.range_methods:
        with phase(f"int8 with {method} ranges, scored on both halves of the calibration photos"):
            quantized = write_int8(ready, ranges_for(method, ready_graph, measured.activations), int8_io, always_float)
            plain[method] = (quantized, scored(quantized, folds))
    method_scores = {method: result.scores(judging) for method, (_, result) in plain.items()}
    method = clear_winner(method_scores)
    quantized, unchanged = plain[method]
    candidates = [] if steps.bias_correction == ALWAYS else [Candidate(method, False, unchanged)]
    if steps.bias_correction != NEVER:
        with phase(f"bias correction of the {method} model, cross-fitted on 2 x {len(folds.samples[0])} samples"):
            candidates.append(Candidate(method, True, cross_fitted(quantized, folds)))
    scores = {candidate.name: candidate.result.scores(judging) for candidate in candidates}
    chosen = next(c for c in candidates if c.name == clear_winner(scores))
    means = _rounded_means(scores)
    label = score_label(judging)  # "cosine", or "score" when outputs are scored by their kinds' figures
    record["activation_ranges"] = describe_choice({"method": method, "scored_on": int(len(unchanged.cosines)),
                                                   label: _rounded_means(method_scores)})
    if label != "cosine":
        record["scored_by"] = _scored_by(judging)
    record["bias_correction"] = {
        "applied": chosen.bias_corrected,
        "how": "empirical, layer by layer, the mean of the two halves' corrections" if chosen.bias_corrected else
               "measured and not applied: it did not lead the uncorrected model by more than noise",
        f"cross_fitted_{label}": means,
    }
    log(f"int8: {chosen.name} (cross-fitted {label} {means})")
    model = chosen.result.model
    record["float_fallback"] = None
    if gate is not None:
        model, record["float_fallback"] = keep_sensitive_tensors_float(
            chosen.method, chosen.bias_corrected, chosen.result, ready, ready_graph, measured.activations, folds,
            int8_io, gate, tuple(kept_float), judging)
    return model, record


def _scored_by(judging: OutputJudging) -> dict[str, str]:
    """Each output's figure in the recipe's scores (core.output_kinds.figure_per_sample, else cosine)."""
    from core.output_kinds import PER_SAMPLE_FIGURE

    return {name: PER_SAMPLE_FIGURE.get(kind, "cosine") for name, kind in zip(judging.names, judging.kinds, strict=True)}


def _rounded_means(cosines_by_name: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: round(float(cosines.mean()), 6) for name, cosines in cosines_by_name.items()}


@dataclass(frozen=True)
class FloatMeasurements:
    statistics: Statistics  # H of every roundable op, weighted layers' outputs on the fold samples
    reference: ModelOutputs  # the float model's outputs for every calibration sample
    activations: Activations  # each activation's span and histogram


SCOUT_SAMPLES = 16  # a first look at each activation's span, to histogram over twice it in the one full pass
SCOUT_MARGIN = 2.0


def _measure_float_model(float_model: bytes, calibration_nhwc: np.ndarray, steps: RecipeSteps) -> FloatMeasurements:
    """Everything the recipe needs of the float model: a short pass over a few samples for each activation's
    rough span, then one pass over every calibration sample (histograms over twice those spans, exact spans,
    rounding statistics, outputs). Weight rounding changes activations by a fraction of a step, so what is
    measured before it holds after it."""
    graph = Graph(float_model)
    tensors = activation_tensors(graph)
    roundable = {op.index for op in roundable_ops(EditableModel(float_model))} if steps.round_weights else set()
    weighted = {op.index for op in graph.ops if op.kind in WEIGHTED_KINDS} if steps.bias_correction != NEVER else set()
    with phase(f"float model, first look ({SCOUT_SAMPLES} samples)"):
        scouted = measure(graph, _spread(calibration_nhwc, SCOUT_SAMPLES), ranges_of=tensors).ranges
    bins = {t: _nonempty(min(low, 0.0) * SCOUT_MARGIN, max(high, 0.0) * SCOUT_MARGIN)
            for t, (low, high) in scouted.items()}
    with phase(f"float model ({len(calibration_nhwc)} samples): ranges, histograms, rounding statistics, outputs"):
        statistics = measure(graph, calibration_nhwc, ranges_of=tensors, histograms_of=bins, hessians_of=roundable,
                             hessian_samples=spread_positions(0, len(calibration_nhwc), ROUNDING_SAMPLES),
                             keep=set(graph.outputs), layer_outputs_of=weighted,
                             layer_output_samples=np.concatenate(fold_positions(len(calibration_nhwc))))
    spans = {t: _nonempty(min(low, 0.0), max(high, 0.0)) for t, (low, high) in statistics.ranges.items()}
    reference = per_sample(graph, statistics.values, len(calibration_nhwc))
    return FloatMeasurements(statistics, reference, Activations(spans, bins, statistics.histograms))


def _nonempty(low: float, high: float) -> tuple[float, float]:
    """A tensor that was 0 on every sample still needs a range the quantizer can divide by."""
    return (low, high) if high > low else (low, low + EMPTY_RANGE)


EMPTY_RANGE = 1e-6


def _spread(samples: np.ndarray, count: int) -> np.ndarray:
    return samples[spread_positions(0, len(samples), count)]


def _rounded(float_model: bytes, hessians: dict, steps: RecipeSteps) -> tuple[bytes, dict]:
    if not steps.round_weights:
        return float_model, {}
    model = EditableModel(float_model)
    with phase("weight rounding (GPTQ)"):
        rounded = round_weights(model, hessians)
    return model.to_bytes(), {"grid_rounded_layers": len(rounded)}


def int8_ready(float_model: bytes, calibration_nhwc: np.ndarray, steps: RecipeSteps) -> tuple[bytes, dict]:
    """The float model with grid-aligned weights as the recipe makes it, and what was done."""
    if not steps.round_weights:
        return float_model, {}
    model = EditableModel(float_model)
    hessians = measure(model.graph, _spread(calibration_nhwc, ROUNDING_SAMPLES),
                       hessians_of={op.index for op in roundable_ops(model)}).hessians
    return _rounded(float_model, hessians, steps)


