"""Inner tensors of an ONNX graph, as explain reads them."""
from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn


def to_onnx(model: nn.Module, path) -> onnx.ModelProto:
    torch.onnx.export(model, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17)
    return onnx.load(str(path))


def test_inner_tensors_returns_the_samples_for_the_graph_input(tmp_path):
    from graph.onnx_run import inner_tensors

    torch.manual_seed(0)
    chain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    model = to_onnx(chain, tmp_path / "chain.onnx")
    samples = np.random.default_rng(2).normal(size=(3, 3, 8, 8)).astype(np.float32)
    input_name = model.graph.input[0].name
    first_conv_output = next(n for n in model.graph.node if n.op_type == "Conv").output[0]
    batches = list(inner_tensors(model, [input_name, first_conv_output], samples))
    assert len(batches) == 3
    for sample, values in zip(samples, batches):
        np.testing.assert_array_equal(values[input_name], sample[None])
        assert values[first_conv_output].shape == (1, 8, 8, 8)
