"""Carry ONNX weight edits into an already converted float TFLite model, instead of converting again.

The int8 model is quantized from a float graph whose convolution weights and biases were equalized and
rounded onto the int8 grid (targets/equalize.py, targets/weight_rounding.py). Everything else is the graph
onnx2tf already converted for fp32. Running onnx2tf a second time for the edited graph costs as much as the
first run, so we find each edited ONNX tensor in the fp32 .tflite by its exact content, in the layout onnx2tf
gives it (OIHW → OHWI for convolutions, → 1HWC for depthwise, as is for biases), and overwrite it there.

The substitution is all or nothing: when any edited tensor is not found exactly once (onnx2tf split a grouped
convolution, two tensors hold the same values, ...), the caller converts the edited graph with onnx2tf.
"""
from __future__ import annotations

import hashlib

import numpy as np

FLOAT32 = 0  # TFLite schema TensorType.FLOAT32


def substitute_edited_weights(float_tflite: bytes, original_onnx, edited_onnx) -> bytes | None:
    """`float_tflite` with every initializer that differs between the two ONNX models replaced by its edited
    value; None when any edited initializer cannot be located unambiguously."""
    from tensorflow.lite.tools import flatbuffer_utils

    originals = _initializers(original_onnx)
    edits = {name: value for name, value in _initializers(edited_onnx).items()
             if name in originals and not np.array_equal(value, originals[name])}
    if not edits:
        return float_tflite
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(float_tflite))
    buffers_by_content = _float_buffers_by_content(model)
    original_contents = _content_counts(originals.values())
    replacements: dict[int, np.ndarray] = {}
    for name, edited in edits.items():
        located = _locate(originals[name], edited, original_contents, buffers_by_content)
        if located is None:
            return None
        replacements.update(located)
    for buffer_index, values in replacements.items():
        model.buffers[buffer_index].data = np.frombuffer(values.astype(np.float32).tobytes(), dtype=np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _initializers(model) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _layouts(values: np.ndarray) -> list:
    """The forms onnx2tf writes an ONNX weight in: as is, conv OIHW → OHWI, depthwise (C,1,H,W) → 1HWC."""
    forms = [lambda a: a]
    if values.ndim == 4:
        forms.append(lambda a: a.transpose(0, 2, 3, 1))
        if values.shape[1] == 1:
            forms.append(lambda a: a.transpose(1, 2, 3, 0))
    return forms


def _content_key(values: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float32).tobytes()).hexdigest()


def _content_counts(arrays) -> dict[str, int]:
    """How many ONNX initializers hold each content, in any of the layouts: a shared content is ambiguous."""
    counts: dict[str, int] = {}
    for values in arrays:
        for key in {_content_key(form(values)) for form in _layouts(values)}:
            counts[key] = counts.get(key, 0) + 1
    return counts


def _float_buffers_by_content(model) -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    seen_buffers = set()
    for subgraph in model.subgraphs:
        for tensor in subgraph.tensors:
            data = model.buffers[tensor.buffer].data if tensor.buffer < len(model.buffers) else None
            if tensor.type != FLOAT32 or data is None or len(data) == 0 or tensor.buffer in seen_buffers:
                continue
            seen_buffers.add(tensor.buffer)
            found.setdefault(hashlib.sha256(bytes(data)).hexdigest(), []).append(tensor.buffer)
    return found


def _locate(original: np.ndarray, edited: np.ndarray, original_contents: dict, buffers_by_content: dict):
    """{buffer index: edited values in that buffer's layout} for the one buffer holding `original`, or None."""
    matches: dict[int, set[bytes]] = {}
    for form in _layouts(original):
        key = _content_key(form(original))
        holders = buffers_by_content.get(key, [])
        if len(holders) == 1 and original_contents.get(key) == 1:
            # A 1x1 kernel has the same bytes in every layout: several forms may name the same buffer.
            matches.setdefault(holders[0], set()).add(np.ascontiguousarray(form(edited), np.float32).tobytes())
    if len(matches) != 1 or any(len(contents) != 1 for contents in matches.values()):
        return None
    (buffer_index, contents), = matches.items()
    return {buffer_index: np.frombuffer(contents.pop(), dtype=np.float32)}
