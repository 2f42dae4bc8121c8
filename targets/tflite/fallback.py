"""Selective float fallback for TFLite int8: when the int8 model fails the parity gate on the calibration samples
(cross-fitted: each sample scores a bias correction it did not tune), the few activation tensors whose int8
ranges cost the most are kept in float, the fewest that make it pass.

What loses accuracy is an activation tensor's int8 range, so a tensor is kept in float by keeping the op that
writes it and every op that reads it in float (mlir_quantize's `denylisted_nodes`; keeping one op float saves
almost nothing, because the tensors around it stay int8). The float ops keep their int8-grid weights: the
fallback removes activation rounding, not weight rounding.

Ranking every tensor by a full quantization each would take minutes; instead the simulator computes what
each candidate would give without requantizing (Graph.with_float_tensors), for the CANDIDATES tensors whose
int8 range costs the most signal-to-noise (from their histograms), and the best four are then tried for real.
"""
from __future__ import annotations

import numpy as np

from dataclasses import dataclass
from typing import Callable

from core.parity import ParityResult, ParityThresholds, compare_outputs
from targets.tflite.activation_ranges import clipping_range
from targets.tflite.child_log import log
from targets.tflite.quantize import (
    Activations,
    CrossFitted,
    Folds,
    ModelOutputs,
    OutputJudging,
    cross_fitted,
    float_ops_for,
    kinds_of,
    model_outputs,
    named,
    output_scores,
    ranges_for,
    scored,
    write_int8,
)
from targets.tflite.simulator import Graph

MAX_FLOAT_TENSORS = 4  # beyond a few tensors the model is no longer the int8 model the user asked for
CANDIDATES = 12  # tensors simulated in float, chosen by the noise their int8 range adds


@dataclass(frozen=True)
class FallbackSteps:
    """What the search needs; the int8 recipe supplies them (tests supply scripted ones)."""

    check: Callable[[object], ParityResult]  # the gate on a model (its cross-fitted scores)
    rank: Callable[[], list[tuple[str, float]]]  # (tensor, output cosine gained when it alone is float), best first
    attempt: Callable[[list[str]], object]  # the int8 model with these tensors kept in float
    float_ops: Callable[[list[str]], tuple[str, ...]]  # the ops that run in float for these tensors


def search(chosen, steps: FallbackSteps, progress: Callable[[str], None] = log) -> tuple[object, dict]:
    """`chosen` when it passes the gate; else the model with the fewest top-ranked tensors in float that passes;
    else `chosen` (a fallback that does not pass is not worth its cost). Returns the model and the record."""
    before = steps.check(chosen)
    record = {"needed": not before.passed, "before": _scores(before)}
    if before.passed:
        return chosen, record
    progress(f"int8 fails the gate on the calibration samples ({'; '.join(before.failures)}): ranking activation "
             "tensors by what keeping each in float gains")
    ranked = [(name, gain) for name, gain in steps.rank() if gain > 0]
    record["ranked"] = [{"tensor": name, "gain": round(gain, 6)} for name, gain in ranked[:2 * MAX_FLOAT_TENSORS]]
    record["attempts"] = []
    for count in range(1, min(MAX_FLOAT_TENSORS, len(ranked)) + 1):
        names = [name for name, _ in ranked[:count]]
        attempt = steps.attempt(names)
        after = steps.check(attempt)
        ops = steps.float_ops(names)
        progress(f"{count} tensor(s) in float ({len(ops)} ops): {_summary(after)}")
        record["attempts"].append({"float_tensors": count, **_scores(after)})
        if after.passed:
            record.update(passed=True, float_tensors=names, float_ops=list(ops), after=_scores(after))
            return attempt, record
    record.update(passed=False, float_tensors=[], float_ops=[])
    return chosen, record


def keep_sensitive_tensors_float(method: str, bias_corrected: bool, chosen: CrossFitted, ready: bytes,
                                 ready_graph: Graph, activations: Activations, folds: Folds, int8_io: bool,
                                 gate: ParityThresholds, always_float: tuple[str, ...] = (),
                                 judging: OutputJudging | None = None) -> tuple[bytes, dict]:
    """The float fallback of the int8 recipe (targets/tflite/int8.py), judged on cross-fitted calibration scores.
    `always_float`: tensors the recipe keeps float whatever the search finds (outputs mixing ranges); `judging`:
    each output's name, kind and layout, so the gate reads each output's own figure."""
    ranges = ranges_for(method, ready_graph, activations)
    steps = FallbackSteps(
        check=lambda model: compare_outputs(named(model.reference, judging), named(model.outputs, judging), gate,
                                            kinds_of(judging)),
        rank=lambda: _rank(Graph(chosen.model), activations, method, folds.samples[1], folds.reference[1], judging),
        attempt=lambda names: (cross_fitted if bias_corrected else scored)(
            write_int8(ready, ranges, int8_io, float_ops_for(ready_graph, [*always_float, *names])), folds),
        float_ops=lambda names: float_ops_for(ready_graph, [*always_float, *names]),
    )
    model, record = search(chosen, steps)
    return model.model, {**record, "judged_on": "cross-fitted calibration samples"}


def _rank(int8_graph: Graph, activations: Activations, method: str, samples: np.ndarray,
          target: ModelOutputs, judging: OutputJudging | None = None) -> list[tuple[str, float]]:
    """(tensor name, output score gained when it alone is float, on the samples), best first, gains > 0 only.
    The score: each output's cosine, or its kind's figure (quantize.output_scores)."""
    baseline = output_scores(target, model_outputs(int8_graph, samples), judging).mean()
    by_name = {info.name: info.index for info in int8_graph.tensors}
    gains = []
    for name in _noisiest(int8_graph, activations, method):
        if name not in by_name:
            continue
        view = int8_graph.with_float_tensors([by_name[name]])
        gains.append((name, float(output_scores(target, model_outputs(view, samples), judging).mean() - baseline)))
    return sorted((g for g in gains if g[1] > 0), key=lambda g: -g[1])


def _noisiest(graph: Graph, activations: Activations, method: str) -> list[str]:
    """The CANDIDATES activation tensors whose int8 range adds the most noise relative to their signal."""
    outputs = set(graph.outputs)
    ratios = []
    for tensor, counts in activations.histograms.items():
        low, high = activations.bins[tensor]
        if counts.sum() == 0 or tensor in outputs:
            continue
        clip_low, clip_high = clipping_range(method, counts, *activations.spans[tensor], bins=(low, high))
        centers = low + (np.arange(len(counts)) + 0.5) * (high - low) / len(counts)
        weights = counts / counts.sum()
        step = (clip_high - clip_low) / 255
        noise = (weights * (centers - np.clip(centers, clip_low, clip_high)) ** 2).sum() + step**2 / 12
        signal = (weights * centers**2).sum()
        ratios.append((noise / max(signal, 1e-30), tensor))
    names = {info.index: info.name for info in graph.tensors}
    return [names[tensor] for _, tensor in sorted(ratios, reverse=True)[:CANDIDATES]]


def _scores(result: ParityResult) -> dict:
    return {"cosine": round(result.cosine, 6), "top1_agreement": result.top1_agreement,
            "samples": result.samples, "failures": list(result.failures)}


def _summary(result: ParityResult) -> str:
    top1 = "" if result.top1_agreement is None else f", top-1 {result.top1_agreement:.3f}"
    return f"cosine {result.cosine:.6f}{top1}, {'passes' if result.passed else 'fails'}"
