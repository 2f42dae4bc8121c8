"""The Core ML side of explain: an ML Program read from its .mlpackage and run by the reference evaluator,
which keeps every value."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from graph.explain_ops import ArtifactOp
from targets.coreml.mil_reference import is_constant, load_program
from targets.coreml.preprocessing import INPUT_NAME

MIL_KINDS = {
    "conv": "CONV_2D", "linear": "FULLY_CONNECTED", "relu": "RELU", "relu6": "RELU6", "clip": "RELU6",
    "add": "ADD", "mul": "MUL", "sub": "SUB", "real_div": "DIV", "concat": "CONCATENATION", "sigmoid": "LOGISTIC",
    "softmax": "SOFTMAX", "tanh": "TANH", "max_pool": "MAX_POOL_2D", "avg_pool": "AVERAGE_POOL_2D",
    "reduce_mean": "MEAN", "cast": "CAST", "split": "SPLIT",
}


class CoreMLGraph:
    """An ML Program read from its .mlpackage and run by the reference evaluator, which keeps every value.

    The Core ML runtime exposes no inner tensors, so on macOS too the layers are those of the reference
    evaluator (the same program, executed by the op semantics parity uses on Linux). The program's input
    is the pixels of the ImageType; `run` turns the contract's tensors back into them."""

    notes = ("the Core ML layers are those of the reference ML Program evaluator: the Core ML runtime does not "
             "expose inner tensors",)

    def __init__(self, package: Path, preprocessing):
        self._program = load_program(package)
        self._preprocessing = preprocessing
        self.input = INPUT_NAME
        # Weights as the program computes them (int8 and palettized ones dequantized by their constexpr op).
        self._constants = self._program.weights()
        constants = {out.name for op in self._program.operations if is_constant(op) for out in op.outputs}
        self.ops = tuple(self._describe(index, op, constants) for index, op in enumerate(self._program.operations)
                         if not is_constant(op))

    def tensor_name(self, name: str) -> str:
        return name

    def _describe(self, index: int, op, constants: set[str]) -> ArtifactOp:
        kind = MIL_KINDS.get(op.type, op.type)
        bound = [binding.name for argument in op.inputs.values() for binding in argument.arguments
                 if binding.WhichOneof("binding") == "name"]
        weight = None
        if op.type in ("conv", "linear") and "weight" in op.inputs:
            weight = self._constants.get(op.inputs["weight"].arguments[0].name)
        if kind == "CONV_2D" and weight is not None and weight.shape[1] == 1 and weight.shape[0] > 1:
            kind = "DEPTHWISE_CONV_2D"  # one input channel per filter: groups == channels
        return ArtifactOp(index, f"{op.type} {op.outputs[0].name}", kind,
                          tuple(name for name in bound if name not in constants),
                          tuple(out.name for out in op.outputs), None if weight is None else weight.shape,
                          weight, False)

    def run(self, batch_nchw: np.ndarray, tensors: list[str]) -> dict[str, np.ndarray]:
        values = self._program.all_values({self.input: self._preprocessing.pixels_from_tensor(batch_nchw)})
        return {name: values[name] for name in tensors}
