"""Selective float fallback for TFLite int8: when the int8 model fails the parity gate on calibration photos
it was not tuned on, the few activation tensors whose int8 ranges cost the most are kept in float, the
fewest that make it pass.

Keeping one op in float (mlir_quantize's `denylisted_nodes`) is not enough on its own: the tensors it reads
and writes stay int8, so only the op's internal rounding is saved (on the default MobileNetV2 no single op
gained more than 0.0003 output cosine). What loses accuracy is an activation tensor's int8 range, so a
tensor is kept in float by keeping the op that writes it and every op that reads it in float. Ranked that
way, the stem convolution's output of MobileNetV2 gains 0.0024 (0.99468 -> 0.99708 before bias correction).

The float ops keep the int8-grid weights of `graph.passes.weight_rounding`: the fallback removes activation
rounding, not weight rounding. The choice is scored on calibration photos bias correction did not measure,
never on the validation photos the parity gate is judged on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from core.parity import ParityResult

MAX_FLOAT_TENSORS = 4  # beyond a few tensors the model is no longer the int8 model the user asked for


@dataclass(frozen=True)
class FloatRegion:
    tensor: str  # the activation tensor kept in float
    ops: tuple[str, ...]  # the ops that run in float for it, named as denylisted_nodes wants (first output)


@dataclass(frozen=True)
class RankedRegion:
    region: FloatRegion
    gain: float  # output cosine gained on the scoring photos when only this tensor is float (before bias correction)


@dataclass(frozen=True)
class FallbackSteps:
    """The three operations the search needs, supplied by the TFLite target."""

    quantize: Callable[[tuple[str, ...]], bytes]  # int8 model with these ops in float
    finish: Callable[[bytes], bytes]  # bias correction
    check: Callable[[bytes], ParityResult]  # the parity gate on the scoring photos


def float_regions(model) -> list[FloatRegion]:
    """One candidate per activation tensor written by an op of a flatbuffer model object (graph outputs
    excluded: a float output is not a fallback, it is the float model's output)."""
    graph = model.subgraphs[0]
    outputs = set(graph.outputs)
    readers: dict[int, list] = {}
    for op in graph.operators:
        for tensor in op.inputs:
            readers.setdefault(tensor, []).append(op)
    names = [tensor.name.decode() for tensor in graph.tensors]
    regions = []
    for op in graph.operators:
        tensor = op.outputs[0]
        if tensor in outputs or tensor not in readers:
            continue
        ops = dict.fromkeys([names[tensor]] + [names[reader.outputs[0]] for reader in readers[tensor]])
        regions.append(FloatRegion(names[tensor], tuple(ops)))
    return regions


def keep_sensitive_tensors_float(finished: bytes, unfinished: bytes, regions: list[FloatRegion], steps: FallbackSteps,
                                 progress: Callable[[str], None] = print) -> tuple[bytes, dict]:
    """`finished` when it passes the gate; else the int8 model with the fewest top-ranked tensors in float
    that passes; else `finished` (a fallback that does not pass is not worth its cost). `unfinished` is
    `finished` before bias correction, the baseline the tensors are ranked against. Returns the model and
    a record of what was measured and chosen, for the manifest."""
    before = steps.check(finished)
    record = {"needed": not before.passed, "before": _scores(before)}
    if before.passed:
        return finished, record
    progress(f"int8 fails the gate on calibration photos ({'; '.join(before.failures)}): ranking "
             f"{len(regions)} activation tensors by what keeping each in float gains")
    ranked = rank_regions(regions, steps, unfinished)
    record["ranked"] = [{"tensor": r.region.tensor, "gain": round(r.gain, 6)} for r in ranked[:2 * MAX_FLOAT_TENSORS]]
    record["attempts"] = []
    for count in range(1, min(MAX_FLOAT_TENSORS, len(ranked)) + 1):
        chosen = [r.region for r in ranked[:count]]
        ops = tuple(dict.fromkeys(op for region in chosen for op in region.ops))
        model = steps.finish(steps.quantize(ops))
        after = steps.check(model)
        progress(f"{count} tensor(s) in float ({len(ops)} ops): {_summary(after)}")
        record["attempts"].append({"float_tensors": count, **_scores(after)})
        if after.passed:
            record.update(passed=True, float_tensors=[r.tensor for r in chosen], float_ops=list(ops),
                          after=_scores(after))
            return model, record
    record.update(passed=False, float_tensors=[], float_ops=[])
    return finished, record


def rank_regions(regions: list[FloatRegion], steps: FallbackSteps, unfinished: bytes) -> list[RankedRegion]:
    """The regions whose float tensor raises the output cosine of `unfinished` (no bias correction, like
    each candidate), most first."""
    baseline = steps.check(unfinished).cosine
    ranked = [RankedRegion(region, steps.check(steps.quantize(region.ops)).cosine - baseline) for region in regions]
    return sorted((r for r in ranked if r.gain > 0), key=lambda r: -r.gain)


def _scores(result: ParityResult) -> dict:
    return {"cosine": round(result.cosine, 6), "top1_agreement": result.top1_agreement,
            "samples": result.samples, "failures": list(result.failures)}


def _summary(result: ParityResult) -> str:
    top1 = "" if result.top1_agreement is None else f", top-1 {result.top1_agreement:.3f}"
    return f"cosine {result.cosine:.6f}{top1}, {'passes' if result.passed else 'fails'}"
