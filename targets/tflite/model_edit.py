"""Editing a .tflite in place: constant buffers as numpy views into the serialized bytes, so changing weights
and biases costs no re-serialization (which reorders nothing and keeps every other byte as it was)."""
from __future__ import annotations

import numpy as np

from targets.tflite.simulator import NUMPY_TYPES, Graph, OpInfo


class EditableModel:
    """`graph` describes the model as it was opened: after an edit, simulate Graph(model.to_bytes())."""

    def __init__(self, model_bytes: bytes):
        from ai_edge_litert import schema_py_generated as schema

        self.data = bytearray(model_bytes)
        self._root = schema.Model.GetRootAsModel(self.data, 0)
        self.graph = Graph(bytes(model_bytes))
        self._tensor_readers: dict[int, list[int]] = {}
        for op in self.graph.ops:
            for index in op.inputs:
                if index >= 0:
                    self._tensor_readers.setdefault(index, []).append(op.index)
        self._buffer_users: dict[int, int] = {}
        subgraph = self._root.Subgraphs(0)
        for index in range(subgraph.TensorsLength()):
            buffer = subgraph.Tensors(index).Buffer()
            self._buffer_users[buffer] = self._buffer_users.get(buffer, 0) + 1
        self._buffers = [subgraph.Tensors(index).Buffer() for index in range(subgraph.TensorsLength())]

    def constant(self, tensor: int) -> np.ndarray:
        """A writable view of a constant tensor's values, inside the model's bytes."""
        info = self.graph.tensors[tensor]
        raw = self._root.Buffers(self._buffers[tensor]).DataAsNumpy()
        return raw.view(NUMPY_TYPES[info.type]).reshape(info.shape)

    def private(self, op: OpInfo, position: int) -> bool:
        """Whether input `position` of `op` is a constant only this op reads and no other tensor shares: editing
        it changes nothing else."""
        if len(op.inputs) <= position or op.inputs[position] < 0:
            return False
        tensor = op.inputs[position]
        return (self.graph.tensors[tensor].constant is not None and len(self._tensor_readers.get(tensor, ())) == 1
                and self._buffer_users.get(self._buffers[tensor], 0) == 1)

    def readers(self, tensor: int) -> list[OpInfo]:
        return [self.graph.ops[index] for index in self._tensor_readers.get(tensor, ())]

    def to_bytes(self) -> bytes:
        return bytes(self.data)
