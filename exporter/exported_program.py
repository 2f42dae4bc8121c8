"""An ExportedProgram's graph module behind the ordinary nn.Module interface the pipeline expects."""
from __future__ import annotations

import torch


class ExportedProgramModule(torch.nn.Module):
    """Wraps `torch.export.load(...).module()`.

    The graph is frozen in the mode it was exported in, and torch refuses `train()`/`eval()` on it;
    the legacy ONNX exporter and our own loader call `eval()`, so switching modes stops here.
    """

    def __init__(self, graph_module: torch.nn.Module):
        super().__init__()
        self.program = graph_module

    def train(self, mode: bool = True) -> "ExportedProgramModule":
        self.training = mode
        return self

    def forward(self, *inputs):
        return self.program(*inputs)
