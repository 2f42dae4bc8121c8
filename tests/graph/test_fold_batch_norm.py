"""BatchNorm folded into the Conv before it in float64: same outputs as PyTorch, no BatchNormalization left where
it can be folded, left alone where it cannot."""
from __future__ import annotations

import collections

import numpy as np
import pytest

from graph.passes.fold_batch_norm import fold_batch_norms


def _trained_batch_norm(channels: int):
    import torch

    norm = torch.nn.BatchNorm2d(channels)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # statistics far from the identity, so a fold that skips one of them shows
        norm.running_mean.copy_(torch.randn(channels, generator=generator))
        norm.running_var.copy_(torch.rand(channels, generator=generator) * 3 + 0.1)
        norm.weight.copy_(torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
    return norm


def _exported(module, tmp_path):
    import onnx
    import torch

    torch.manual_seed(0)
    path = tmp_path / "model.onnx"
    torch.onnx.export(module.eval(), (torch.zeros(1, 3, 16, 16),), str(path), dynamo=False, opset_version=17,
                      training=torch.onnx.TrainingMode.PRESERVE)
    return onnx.load(str(path))


def _run(model, x):
    import onnxruntime

    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


class _SharedConvOutput:
    """A Conv whose output a BatchNorm and a residual both read: folding would change the residual."""

    @staticmethod
    def build():
        import torch

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.conv, self.norm = torch.nn.Conv2d(3, 3, 3, padding=1), _trained_batch_norm(3)

            def forward(self, x):
                y = self.conv(x)
                return self.norm(y) + y

        return Model()


def _ops(model) -> collections.Counter:
    return collections.Counter(node.op_type for node in model.graph.node)


@pytest.mark.parametrize("groups", [1, 4])
def test_a_conv_and_its_batch_norm_become_one_conv_with_the_same_outputs(groups, tmp_path):
    import torch

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), _trained_batch_norm(8),
                                 torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1, groups=groups),
                                 _trained_batch_norm(8))
    model = _exported(module, tmp_path)
    assert _ops(model)["BatchNormalization"] == 2
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    assert fold_batch_norms(model) == 2
    assert _ops(model)["BatchNormalization"] == 0
    expected = module(torch.from_numpy(x)).detach().numpy()
    # float32 rounding of the folded weights against PyTorch's unfolded float32 arithmetic: measured max
    # 1.8e-7 of the largest output (groups 1 and 4); a fold that drops epsilon (1e-5) is off by 1.2e-5, and one
    # that drops the mean or the variance by more than 1e-1.
    np.testing.assert_allclose(_run(model, x), expected, atol=2e-6 * np.abs(expected).max())


def test_a_batch_norm_whose_conv_output_is_read_elsewhere_stays(tmp_path):
    model = _exported(_SharedConvOutput.build(), tmp_path)
    assert fold_batch_norms(model) == 0
    assert _ops(model)["BatchNormalization"] == 1
