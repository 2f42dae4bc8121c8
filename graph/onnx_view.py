"""One view of an ONNX graph: who produces and who reads each tensor, its constants, its static shapes.

Every pass and every reader of ONNX graphs (lean graph, range equalization, weight rounding, explain, the
cost model) builds on this class instead of indexing the graph its own way. The view indexes the graph once;
a pass that rewrites nodes calls `reindex()` afterwards.
"""
from __future__ import annotations

import numpy as np


class OnnxView:
    def __init__(self, model):
        self.model = model
        self.graph = model.graph
        self.reindex()

    def reindex(self) -> None:
        graph = self.graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.constant_nodes = {node.output[0]: node for node in graph.node if node.op_type == "Constant"}
        self.producers = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.graph_outputs = {output.name for output in graph.output}
        # Names of tensors fixed at export time: initializers and Constant node outputs.
        self.constants = set(self.initializers) | set(self.constant_nodes)

    # ---- tensors -------------------------------------------------------------------------------------

    @property
    def input_name(self) -> str:
        return next(i.name for i in self.graph.input if i.name not in self.initializers)

    def array(self, name: str) -> np.ndarray:
        """An initializer's values."""
        from onnx import numpy_helper

        return numpy_helper.to_array(self.initializers[name])

    def constant_value(self, name: str) -> np.ndarray | None:
        """The values of an initializer or of a Constant node's `value`, or None for a computed tensor."""
        from onnx import numpy_helper

        if name in self.initializers:
            return self.array(name)
        node = self.constant_nodes.get(name)
        if node is not None and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def replace_initializer(self, name: str, values: np.ndarray) -> None:
        from onnx import numpy_helper

        self.initializers[name].CopyFrom(numpy_helper.from_array(values.astype(np.float32), name))

    def static_shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape, for inputs, outputs and inferred values whose every dimension is known."""
        shapes = {}
        for info in [*self.graph.input, *self.graph.value_info, *self.graph.output]:
            shape = static_shape(info)
            if shape is not None:
                shapes[info.name] = shape
        return shapes

    # ---- nodes ---------------------------------------------------------------------------------------

    def data_inputs(self, node) -> tuple[str, ...]:
        """The inputs of `node` computed at run time (not constants, not omitted optional inputs)."""
        return tuple(name for name in node.input if name and name not in self.constants)

    def only_consumer(self, tensor: str):
        """The one node reading `tensor`, when nothing else (not even the graph's outputs) reads it."""
        readers = self.consumers.get(tensor, [])
        return readers[0] if len(readers) == 1 and tensor not in self.graph_outputs else None

    def use_count(self, tensor: str) -> int:
        return len(self.consumers.get(tensor, []))


def static_shape(value_info) -> tuple[int, ...] | None:
    dims = value_info.type.tensor_type.shape.dim
    if not dims or any(not d.HasField("dim_value") for d in dims):
        return None
    return tuple(d.dim_value for d in dims)


def attribute(node, name: str, default=None):
    """A node attribute's value (ints as a list, strings as bytes), or `default` when absent."""
    from onnx import helper

    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def conv_group(conv) -> int:
    """An ONNX Conv node's `group` attribute (1 when absent)."""
    return next((a.i for a in conv.attribute if a.name == "group"), 1)
