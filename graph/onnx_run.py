"""Inner tensors of an ONNX graph on calibration samples, computed by ONNX Runtime."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from core.artifact import VALIDATION_THREADS


def inner_tensors(model, tensor_names: list[str], samples: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """For each batch of samples (at the model's fixed batch size): {tensor name: its value}."""
    import onnx
    import onnxruntime

    probe = onnx.ModelProto.FromString(model.SerializeToString())
    existing = {output.name for output in probe.graph.output}
    graph_inputs = {value.name for value in probe.graph.input}
    computed = [name for name in tensor_names if name not in graph_inputs]  # asking ORT for an input returns junk
    for name in computed:
        if name not in existing:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = VALIDATION_THREADS
    session = onnxruntime.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    batch = model_input.shape[0] if isinstance(model_input.shape[0], int) else 1
    for start in range(0, len(samples) - batch + 1, batch):
        feed = samples[start : start + batch].astype(np.float32)
        values = dict(zip(computed, session.run(computed, {model_input.name: feed}))) if computed else {}
        yield {name: values[name] if name in values else feed for name in tensor_names}
