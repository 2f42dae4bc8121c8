"""Selective float fallback for ncnn int8: when the int8 pair fails the int8 gate on calibration samples it was
not calibrated on, the fewest int8 layers (at most MAX_FLOAT_LAYERS) whose int8 input costs the most are kept
float, if that passes.

Cross-fitted: the thresholds of the pair judged here come from the even-numbered calibration samples and it is
judged on the odd-numbered ones (the export's samples come photo by photo, so both halves see every photo). Judged
on the samples its thresholds came from, EfficientNet-B0's pair read cosine 0.9934 and passed, and read 0.9882 on
the held-out digits. Each int8 layer is ranked by the cosine the pair reaches with that layer alone float; layers
are then kept float in that order until the gate passes. When MAX_FLOAT_LAYERS do not pass, plain int8 ships (its
gate verdict says the rest), as the TFLite fallback does. The shipped pair takes its thresholds from every
calibration sample.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.parity import ParityResult, ParityThresholds, compare_outputs
from targets.ncnn.runner import NcnnRunner

MAX_FLOAT_LAYERS = 8
JUDGED_ON = "odd-numbered calibration samples, by a pair calibrated on the even-numbered ones"
RANKING_SAMPLES = 32  # of the judging half, spread over it


def gate_fallback(fp32_param: Path, fp32_weights: Path, outputs: dict[str, str], calibration: np.ndarray,
                  gate: ParityThresholds, kinds: dict[str, str], scratch: Path):
    """The callable write_int8 takes: () -> (layers kept float, the record for the manifest)."""

    def choose():
        from targets.ncnn.int8 import plan_int8

        scratch.mkdir(exist_ok=True)
        fitting, judging = calibration[0::2], calibration[1::2]
        plan = plan_int8(fp32_param, fp32_weights, fitting)
        reference = NcnnRunner(fp32_param, fp32_weights, "fp32", outputs=outputs).run_outputs(judging)

        def judged(keep_float: frozenset[str], samples=slice(None)) -> ParityResult:
            param, weights = scratch / "candidate.param", scratch / "candidate.bin"
            plan.write(param, weights, keep_float)
            candidate = NcnnRunner(param, weights, "int8", outputs=outputs).run_outputs(judging[samples])
            return compare_outputs({name: values[samples] for name, values in reference.items()}, candidate, gate,
                                   kinds)

        plain = judged(frozenset())
        if plain.passed:
            return frozenset(), {"needed": False, "before": _figures(plain), "judged_on": JUDGED_ON}
        spread = np.unique(np.linspace(0, len(judging) - 1, min(RANKING_SAMPLES, len(judging))).astype(int))
        gains = {name: judged(frozenset({name}), spread).cosine for name in plan.int8_layers}
        kept: list[str] = []
        result = plain
        for name in sorted(gains, key=lambda layer: -gains[layer])[:MAX_FLOAT_LAYERS]:
            kept.append(name)
            result = judged(frozenset(kept))
            if result.passed:
                return frozenset(kept), {"needed": True, "passed": True, "float_tensors": kept,
                                         "before": _figures(plain), "after": _figures(result), "judged_on": JUDGED_ON,
                                         "kept_float": "the input of these int8-capable layers (the layers run float)"}
        return frozenset(), {"needed": True, "passed": False, "float_tensors": [], "before": _figures(plain),
                             "judged_on": JUDGED_ON,
                             "best_tried": {"float_layers": kept, **_figures(result)}}

    return choose


def _figures(result: ParityResult) -> dict:
    return {"cosine": round(float(result.cosine), 6), "top1_agreement": result.top1_agreement,
            "failures": list(result.failures)}
