"""The converter child, run by ExecuTorch's own interpreter (environment.py): `python -m targets.executorch.lower
REQUEST.json`. It reads the exported program the parent saved (torch.export, same torch version on both
sides) and writes the .pte files:

- fp32: the program lowered to the XNNPACK delegate (to_edge_transform_and_lower), as ExecuTorch's own
  examples do; what XNNPACK cannot take runs in ExecuTorch's portable kernels, and the record lists those ops.
- int8: PT2E static quantization for XNNPACK (XNNPACKQuantizer: int8 weights per output channel, symmetric;
  int8 activations per tensor, affine), calibrated on the export's calibration photos, then lowered the same
  way. Activation ranges: PT2E's histogram observer, or graph/activation_ranges.py's rule (each sample's
  99.999th percentile, averaged, on a 1/128-octave grid; ncnn int8 and Core ML W8A8 use it), whichever does
  clearly better cross-fitted on the two halves of the calibration samples. Neither wins everywhere: on the
  default MobileNetV2 (150 held-out crops, cosine / top-1) the rule gives 0.991836 / 0.953 and the histogram
  0.974492 / 0.927; on the digit-trained MobileNetV3-Small (397 held-out digits) the rule 0.944393 / 0.922 and
  the histogram 0.999727 / 0.997. The
  last weighted ops, which write the model's answers, keep a float output (int8 weights, the input quantized at
  run time), because 8-bit logits tie; the ops after them (reshapes, activations, concatenations of boxes and
  scores) run in float, as in ncnn int8, where only weighted layers compute in int8.
  On the default MobileNetV2 with the rule's ranges: answers with float output 0.991827 / 0.953 in 3.76 MB, fully
  int8 0.990001 / 0.687, float weights too 0.991836 / 0.953 in 7.59 MB.

Imports torch, executorch, torchao, numpy (2.x here) and our own numpy-only modules, nothing that needs numpy 1.
"""
from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from pathlib import Path

from functools import lru_cache

import numpy as np

from graph.activation_ranges import DESCRIPTION as PERCENTILE_DESCRIPTION
from core.parity import cosine_per_sample
from graph.activation_ranges import calibrated, sample_bounds
from targets.executorch.convert import CHILD_RESULT, FILE_FOR_PRECISION

HISTOGRAM, PERCENTILE = "histogram", "percentile"
# Activation-range methods, the default first: PT2E's own, and the rule ncnn int8 and Core ML W8A8 use.
RANGE_METHODS = {HISTOGRAM: "PT2E's HistogramObserver: the range with the least quantization error over the "
                            "calibration samples' pooled histogram",
                 PERCENTILE: PERCENTILE_DESCRIPTION}
CLEAR_LEAD_STANDARD_ERRORS = 2.0
# The ops with weights, as torch.export names them: a model's last ones write its answers.
_WEIGHTED = frozenset({"conv1d", "conv2d", "conv3d", "convolution", "_convolution", "conv_transpose1d",
                       "conv_transpose2d", "linear", "addmm", "mm", "bmm", "matmul"})


def main(request_path: Path) -> None:
    request = json.loads(request_path.read_text())
    workdir = request_path.parent
    import torch

    torch.set_grad_enabled(False)  # calibration and the cross-fit only run the model
    program = torch.export.load(request["program"])
    example = (torch.zeros(tuple(request["input_shape"]), dtype=torch.float32),)
    result = {"fp32": _lowered(program, workdir / FILE_FOR_PRECISION["fp32"], "fp32")}
    calibration = np.load(request["calibration"]).astype(np.float32)
    started = time.perf_counter()
    method, evidence = _choose_range_method(program, example, calibration)
    quantized, answer_ops, float_tail, observed = _quantized(program, example, calibration, method)
    print(f"int8: {method} ranges for {observed} activations on {len(calibration)} samples "
          f"in {time.perf_counter() - started:.1f} s; float output: {', '.join(answer_ops) or 'nothing'}", flush=True)
    result["int8"] = _lowered(torch.export.export(quantized, example), workdir / FILE_FOR_PRECISION["int8"], "int8")
    result["int8"]["quantization"] = {
        "quantizer": "XNNPACKQuantizer (PT2E): int8 weights per output channel, symmetric; int8 activations per "
                     "tensor, affine",
        "activation_ranges": {"method": method, "description": RANGE_METHODS[method], "chosen_by": evidence},
        "calibration_samples": len(calibration),
        "calibrated_tensors": observed,
        "answer_ops": {"ops": answer_ops,
                       "quantized": "float output; int8 weights per output channel with the input quantized at run "
                                    "time where XNNPACK has such a kernel for the op (linear), float otherwise"},
        "float_after_answers": float_tail,
    }
    (workdir / CHILD_RESULT).write_text(json.dumps(result))


def _lowered(program, path: Path, precision: str) -> dict:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    started = time.perf_counter()
    edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
    record = _op_record(edge.exported_program().graph)
    path.write_bytes(edge.to_executorch().buffer)
    print(f"{precision}: lowered to XNNPACK in {time.perf_counter() - started:.1f} s: {record}", flush=True)
    return record


def _op_record(graph) -> dict:
    """How much of the program XNNPACK runs: its partitions, and every other op by name (they run in
    ExecuTorch's portable kernels, on one thread)."""
    delegated, portable = 0, Counter()
    for node in graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name == "executorch_call_delegate":
            delegated += 1
        elif name != "getitem":
            portable[name.split(".")[0]] += 1
    return {"xnnpack_partitions": delegated, "portable_ops": dict(sorted(portable.items()))}


def _quantized(program, example, calibration: np.ndarray, method: str):
    """The PT2E-quantized module with `method`'s activation ranges, the answer ops, the float ops after them, and
    how many activation ranges were set."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.observer import HistogramObserver
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import ComposableQuantizer

    module = program.module()
    tail, answers = _output_tail(module.graph)
    config = get_symmetric_quantization_config(is_per_channel=True)
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    sparing_quantizer, calibrated_range_observer = _pt2e_classes()
    static = sparing_quantizer(tail | answers).set_global(_with_our_ranges(config) if method == PERCENTILE else config)
    # answer ops: int8 weights, float output (XNNPACK's dynamically quantized kernels)
    dynamic = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    quantizer = ComposableQuantizer([static, dynamic.set_filter_function(lambda node: node.name in answers)])
    prepared = prepare_pt2e(module, quantizer)
    for chunk in _chunks(calibration, example[0].shape[0]):
        prepared(chunk)
    observed = sum(isinstance(m, (calibrated_range_observer, HistogramObserver)) and bool(m.min_val.isfinite().all())
                   for m in prepared.modules())
    return convert_pt2e(prepared), sorted(answers), sorted(tail), observed


def _choose_range_method(program, example, calibration: np.ndarray) -> tuple[str, dict]:
    """The activation-range method for this model, cross-fitted: each method calibrated on one half of the
    calibration samples is judged on the other half (cosine with the float program, per sample, in PyTorch's
    simulation of the int8 program), both ways round. The other method wins only by more than
    CLEAR_LEAD_STANDARD_ERRORS standard errors of the paired per-sample difference."""
    import torch

    batch = example[0].shape[0]
    chunks = list(_chunks(calibration, batch))
    halves = (chunks[0::2], chunks[1::2])
    reference = program.module()
    cosines = {}
    for method in RANGE_METHODS:
        per_sample = []
        for fit, judge in ((halves[0], halves[1]), (halves[1], halves[0])):
            fitted = torch.cat(fit).numpy()
            quantized = _quantized(program, example, fitted, method)[0]
            per_sample += [_cosine(reference(chunk), quantized(chunk)) for chunk in judge]
        cosines[method] = np.asarray(per_sample)
        print(f"int8: {method} ranges, cross-fitted cosine {cosines[method].mean():.6f}", flush=True)
    default, other = RANGE_METHODS
    difference = cosines[other] - cosines[default]
    lead = float(difference.mean())
    standard_error = float(difference.std(ddof=1) / math.sqrt(len(difference))) if len(difference) > 1 else math.inf
    chosen = other if lead > CLEAR_LEAD_STANDARD_ERRORS * standard_error else default
    return chosen, {"cross_fitted_cosine": {m: round(float(c.mean()), 6) for m, c in cosines.items()},
                    "lead_of_" + other: round(lead, 6), "standard_error": round(standard_error, 6),
                    "rule": f"{other} only when it leads by more than {CLEAR_LEAD_STANDARD_ERRORS} standard errors; "
                            f"else {default}", "samples": len(difference)}


def _chunks(samples: np.ndarray, batch: int):
    import torch

    for start in range(0, len(samples) - batch + 1, batch):
        yield torch.from_numpy(np.ascontiguousarray(samples[start:start + batch]))


def _cosine(reference, candidate) -> float:
    """Mean over the outputs, and over the batch's samples, of core/parity.py's cosine per sample."""
    from torch.utils._pytree import tree_flatten

    values = []
    for ref, out in zip(tree_flatten(reference)[0], tree_flatten(candidate)[0]):
        ref, out = (t.detach().double().reshape(t.shape[0], -1).numpy() for t in (ref, out))
        values.append(cosine_per_sample(ref, out).mean())
    return float(np.mean(values))


def _output_tail(graph) -> tuple[set[str], set[str]]:
    """(tail, answers): every op between the model's last weighted layers and its outputs (reshapes, sums,
    activations, concatenations: cheap, and where outputs of different ranges are assembled), and those last
    weighted layers, which write the answers."""
    outputs = next(node for node in graph.nodes if node.op == "output")
    tail, answers, seen = set(), set(), set()
    pending = list(outputs.all_input_nodes)
    while pending:
        node = pending.pop()
        if node.name in seen or node.op != "call_function":
            continue
        seen.add(node.name)
        if getattr(node.target, "__name__", str(node.target)).split(".")[0] in _WEIGHTED:
            answers.add(node.name)
        else:
            tail.add(node.name)
            pending.extend(node.all_input_nodes)
    return tail, answers


def _with_our_ranges(config):
    """The quantization config with CalibratedRangeObserver for activations (weights keep their observers)."""
    from dataclasses import replace

    def swapped(spec):
        if spec is None:
            return None
        # the default histogram observer's eps, so a constant tensor still gets a usable scale
        return replace(spec, observer_or_fake_quant_ctr=_pt2e_classes()[1].with_args(eps=2 ** -12))

    return replace(config, input_activation=swapped(config.input_activation),
                   output_activation=swapped(config.output_activation))


@lru_cache(maxsize=None)
def _pt2e_classes():
    """(SparingQuantizer, CalibratedRangeObserver), defined on first use: executorch and torchao import only under
    ExecuTorch's interpreter, and this module must import anywhere (the main virtualenv walks every module)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer
    from torchao.quantization.pt2e.observer import MinMaxObserver
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    class SparingQuantizer(XNNPACKQuantizer):
        """XNNPACKQuantizer leaving the `spared` nodes float. Its filter function does not reach every annotator
        (executorch 1.5.1 annotates every concatenation regardless, with one scale for all its inputs: boxes in
        pixels and scores in 0..1 then share one int8 scale), so their annotations are removed afterwards too."""

        def __init__(self, spared: set[str]):
            super().__init__()
            self._spared = frozenset(spared)
            self.set_filter_function(lambda node: node.name not in self._spared)

        def annotate(self, model):
            model = super().annotate(model)
            for node in model.graph.nodes:
                if node.name in self._spared:
                    node.meta.pop(Q_ANNOTATION_KEY, None)
            return model

    class CalibratedRangeObserver(MinMaxObserver):
        """A MinMaxObserver whose range is graph/activation_ranges.py's rule: per calibration sample the tails
        beyond the 99.999th percentile are clipped, the range is the mean over samples, snapped to the grid."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.lows: list[float] = []
            self.highs: list[float] = []

        def forward(self, x):
            import torch

            if x.numel() == 0:
                return x
            values = x.detach().to(torch.float64).cpu().numpy()
            for sample in values.reshape(values.shape[0], -1) if values.ndim > 1 else values.reshape(1, -1):
                low, high = sample_bounds(sample)
                self.lows.append(low)
                self.highs.append(high)
            self.min_val = torch.tensor(calibrated(self.lows), dtype=torch.float32)
            self.max_val = torch.tensor(calibrated(self.highs), dtype=torch.float32)
            return x

    return SparingQuantizer, CalibratedRangeObserver


if __name__ == "__main__":
    main(Path(sys.argv[1]))
