"""Which LiteRT output is which ONNX output, and in which layout.

The TFLite converter orders and names a graph's outputs its own way ("Identity", "Identity_1", ...), and
onnx2tf turns channel-first tensors channels-last. So the outputs are matched by their values: the fp32 model and
the ONNX model run on the same calibration samples, and each ONNX output takes the LiteRT output (and layout)
that reproduces it best. The int8 and fp16 models keep the fp32 model's outputs in order; parity then checks
every output of every artifact against the reference by name, so a wrong match cannot pass unseen.
"""
from __future__ import annotations

import numpy as np

from core.artifact import to_onnx_shape
from core.errors import ConverterError
from core.parity import cosine_per_sample

AS_IS, CHANNELS_LAST = "as ONNX", "channels last"
MATCH_SAMPLES = 2


def channels_first(values: np.ndarray, layout: str) -> np.ndarray:
    """A LiteRT output back in the ONNX model's layout."""
    if layout == AS_IS or values.ndim < 3:
        return values
    return np.moveaxis(values, -1, 1)


def match_outputs(onnx_path, names: list[str], litert_outputs: list[np.ndarray], samples_nchw: np.ndarray) -> list[dict]:
    """[{"name": ONNX output, "index": LiteRT output position, "layout": AS_IS | CHANNELS_LAST}] for the outputs
    `names` of the ONNX file at `onnx_path`, in that order. `litert_outputs`: the fp32 model's outputs on
    `samples_nchw`, in LiteRT's order."""
    import onnx

    from graph.onnx_run import inner_tensors

    batches = list(inner_tensors(onnx.load(str(onnx_path)), names, samples_nchw))
    reference = {name: np.concatenate([batch[name] for batch in batches]) for name in names}
    taken: set[int] = set()
    matched = []
    for name in names:
        best = _best_match(reference[name], litert_outputs, taken)
        if best is None:
            shapes = ", ".join(str(values.shape[1:]) for values in litert_outputs)
            raise ConverterError(
                f"no TFLite output matches the ONNX output {name!r} {reference[name].shape[1:]} (TFLite gives {shapes})",
                hint="the converter changed an output's shape; see the tflite log in OUT/<model>/logs/",
            )
        taken.add(best[0])
        matched.append({"name": name, "index": best[0], "layout": best[1]})
    return matched


def _best_match(expected: np.ndarray, litert_outputs: list[np.ndarray], taken: set[int]) -> tuple[int, str] | None:
    """The untaken (LiteRT output, layout) whose values are closest to `expected`: highest mean cosine."""
    candidates = []
    for index, values in enumerate(litert_outputs):
        if index in taken:
            continue
        for layout in (AS_IS, CHANNELS_LAST):
            restored = to_onnx_shape(channels_first(values, layout), expected.shape)
            if restored is not None:
                score = cosine_per_sample(expected.reshape(len(expected), -1).astype(np.float64),
                                          restored.reshape(len(expected), -1).astype(np.float64)).mean()
                candidates.append((score, -index, layout == AS_IS, index, layout))
    if not candidates:
        return None
    *_, index, layout = max(candidates)
    return index, layout

