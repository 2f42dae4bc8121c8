"""Lean graph: an ONNX → ONNX rewrite, applied before onnx2tf, that removes layout work the math does not need.

onnx2tf runs the graph in NHWC. A channel shuffle written the PyTorch way (Reshape to N×g×C/g×H×W,
Transpose of the two channel axes, Reshape back) is a 5-D reshape of a tensor whose memory order onnx2tf
has changed, so it converts it by going back to NCHW and out again: TRANSPOSE ops around every shuffle.
The shuffle is only a fixed permutation of channels, and a Gather on the channel axis with constant indices
says exactly that; onnx2tf maps its axis to NHWC's last axis and emits one GATHER, no TRANSPOSE.

Rewrites, each exact (values are only moved, never computed):
- **Channel permutations**: Reshape → Transpose → Reshape chains whose net effect is a permutation of the
  channels of an N×C×H×W tensor (checked by running the chain on an index tensor) become one Gather.
- **Slices of a permutation**: a channel Slice of such a Gather (ShuffleNetV2 splits every shuffled tensor in
  two) becomes a Gather of the sliced indices, so a shuffle + split costs two copies instead of three.
- **Zero padding for max pools of non-negative tensors**: a padded MaxPool reads -inf in its padding, which
  onnx2tf writes as a PADV2 with the float minimum. int8 calibration then sees -3.4e38 in that tensor's range:
  its scale becomes ~1e36, the int8 model computes nothing and XNNPACK refuses to load it (ShuffleNetV2's
  stem, SqueezeNet 1.0's ceil-mode pools). After a ReLU every value is >= 0, so padding with 0 gives the same
  maximum: the MaxPool gets an explicit zero Pad in front (ceil mode's extra windows as more end padding)
  and no padding of its own.

Zero Pads before a convolution need no pass here: the ONNX stage's onnxsim already folds them into the
Conv's pads. The PAD ops that remain in a TFLite graph come from convolutions and pools with stride 2 on an
even input: PyTorch pads such a 3x3 window one row on top (the bottom pad is never read), TFLite's SAME pads
one row at the bottom, and TFLite convolutions take no explicit padding, so onnx2tf must keep a PAD.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from core.artifact import ConversionJob
from graph.onnx_view import OnnxView, attribute

CHANNEL_AXIS = 1
LEAN_FOLDER = "lean_source"


@dataclass(frozen=True)
class LeanGraphReport:
    channel_permutations: int  # Reshape → Transpose → Reshape chains turned into one Gather
    slices_into_gathers: int  # channel Slices of those Gathers turned into Gathers of the sliced indices
    max_pools_zero_padded: int  # padded MaxPools of non-negative tensors given an explicit zero Pad

    def summary(self) -> str:
        return (f"{self.channel_permutations} channel shuffles as Gather, {self.slices_into_gathers} channel slices "
                f"of them as Gather, {self.max_pools_zero_padded} max pools zero-padded")


def with_lean_graph(job: ConversionJob) -> ConversionJob:
    """The same job, converting a lean copy of its ONNX file (written into the job's work folder). What was
    rewritten goes to the target's log."""
    import onnx

    lean, report = lean_graph(onnx.load(str(job.onnx.path)))
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(job.log_path, "a", encoding="utf-8") as log:
        log.write(f"[mobile-export] lean graph for onnx2tf: {report.summary()}\n")
    # A folder of its own: onnx2tf names its outputs after the input file and writes beside its output.
    folder = job.workdir / LEAN_FOLDER
    folder.mkdir(exist_ok=True)
    path = folder / Path(job.onnx.path).name
    onnx.save(lean, str(path))
    return replace(job, onnx=replace(job.onnx, path=path))


def lean_graph(model) -> tuple[object, LeanGraphReport]:
    """Returns (rewritten copy of the ONNX model, what was rewritten)."""
    import onnx

    model = onnx.shape_inference.infer_shapes(onnx.ModelProto.FromString(model.SerializeToString()))
    graph = _Graph(model)
    report = LeanGraphReport(
        channel_permutations=_permutations_to_gathers(graph),
        slices_into_gathers=_slices_of_gathers(graph),
        max_pools_zero_padded=_zero_pad_max_pools(graph),
    )
    graph.drop_unused()
    onnx.checker.check_model(model)
    return model, report


class _Graph(OnnxView):
    """The graph view with static shapes at hand, and edits that keep the nodes in order (each re-indexes)."""

    def __init__(self, model):
        super().__init__(model)
        self.shapes = self.static_shapes()
        self._names = 0

    def sole_consumer(self, tensor: str, op_type: str):
        """The one node reading `tensor`, if it is an `op_type` and nothing else (not even the graph) reads it."""
        reader = self.only_consumer(tensor)
        return reader if reader is not None and reader.op_type == op_type else None

    def constant(self, name: str):
        return self.array(name) if name in self.initializers else None

    def add_constant(self, stem: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self._names += 1
        name = f"lean_graph/{stem}_{self._names}"
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.reindex()
        return name

    def replace_nodes(self, old: list, new: list) -> None:
        """Put `new` where the first of `old` stood (keeps topological order), drop the rest of `old`.
        Nodes are matched by their outputs: protobuf hands out fresh wrappers, so identity means nothing."""
        gone = {tuple(node.output) for node in old}
        rebuilt = []
        for node in self.graph.node:
            if tuple(node.output) == tuple(old[0].output):
                rebuilt.extend(new)
            if tuple(node.output) not in gone:
                rebuilt.append(_copy(node))
        del self.graph.node[:]
        self.graph.node.extend(rebuilt)
        self.reindex()

    def drop_unused(self) -> None:
        used = {name for node in self.graph.node for name in node.input} | self.graph_outputs
        produced = {name for node in self.graph.node for name in node.output}
        initializers = [init for init in self.graph.initializer if init.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(initializers)
        infos = [info for info in self.graph.value_info if info.name in produced]
        del self.graph.value_info[:]
        self.graph.value_info.extend(infos)
        self.reindex()


def _copy(node):
    return type(node).FromString(node.SerializeToString())


def _gather_node(data: str, indices: str, output: str, name: str):
    from onnx import helper

    return helper.make_node("Gather", [data, indices], [output], name=name, axis=CHANNEL_AXIS)


# ---- channel permutations ------------------------------------------------------------------------------


def _permutations_to_gathers(graph: _Graph) -> int:
    rewritten = 0
    for first in [node for node in graph.graph.node if node.op_type == "Reshape"]:
        chain = _reshape_transpose_reshape(graph, first)
        if chain is None:
            continue
        permutation = _channel_permutation(graph, *chain)
        if permutation is None:
            continue
        indices = graph.add_constant("channel_permutation", permutation.astype(np.int64))
        gather = _gather_node(first.input[0], indices, chain[2].output[0], f"{chain[2].name}/as_gather")
        graph.replace_nodes(list(chain), [gather])
        rewritten += 1
    return rewritten


def _reshape_transpose_reshape(graph: _Graph, first) -> tuple | None:
    transpose = graph.sole_consumer(first.output[0], "Transpose")
    last = graph.sole_consumer(transpose.output[0], "Reshape") if transpose is not None else None
    return (first, transpose, last) if last is not None else None


def _channel_permutation(graph: _Graph, first, transpose, last) -> np.ndarray | None:
    """The channel order the chain produces, if the chain is a pure channel permutation of a 4-D tensor."""
    shape = graph.shapes.get(first.input[0])
    if shape is None or len(shape) != 4:
        return None
    positions = np.arange(int(np.prod(shape))).reshape(shape)
    try:
        moved = positions.reshape(_reshape_target(graph, first, shape))
        moved = moved.transpose(attribute(transpose, "perm", None))
        moved = moved.reshape(_reshape_target(graph, last, moved.shape))
    except (TypeError, ValueError):
        return None
    if moved.shape != shape:
        return None
    plane = shape[2] * shape[3]
    permutation = (moved[0, :, 0, 0] // plane) % shape[1]
    return permutation if np.array_equal(moved, positions[:, permutation]) else None


def _reshape_target(graph: _Graph, reshape, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """ONNX Reshape's target: 0 copies the input's dimension (unless allowzero), -1 is inferred."""
    target = graph.constant(reshape.input[1])
    if target is None:
        raise ValueError("the Reshape's shape is not a constant")
    allow_zero = attribute(reshape, "allowzero", 0) == 1
    return tuple(
        input_shape[axis] if size == 0 and not allow_zero else int(size) for axis, size in enumerate(target.tolist())
    )


# ---- slices of permutations ----------------------------------------------------------------------------


def _slices_of_gathers(graph: _Graph) -> int:
    rewritten = 0
    for gather in [node for node in graph.graph.node if node.op_type == "Gather"]:
        indices = graph.constant(gather.input[1])
        channel_gather = attribute(gather, "axis", 0) == CHANNEL_AXIS and gather.output[0] not in graph.graph_outputs
        if indices is None or indices.ndim != 1 or not channel_gather:
            continue
        readers = graph.consumers.get(gather.output[0], [])
        ranges = [_channel_slice(graph, reader) for reader in readers]
        if not readers or any(r is None for r in ranges):
            continue
        gathers = [
            _gather_node(gather.input[0], graph.add_constant("sliced_permutation", indices[channels]),
                         reader.output[0], f"{reader.name}/as_gather")
            for reader, channels in zip(readers, ranges)
        ]
        graph.replace_nodes([gather, *readers], gathers)
        rewritten += len(readers)
    return rewritten


def _channel_slice(graph: _Graph, node) -> slice | None:
    """The Python slice a Slice node takes on the channel axis, when that is all it does (positive steps:
    ONNX clamps starts and ends the way Python slicing does)."""
    if node.op_type != "Slice":
        return None
    starts, ends = graph.constant(node.input[1]), graph.constant(node.input[2])
    axes = graph.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
    steps = graph.constant(node.input[4]) if len(node.input) > 4 and node.input[4] else np.ones(len(starts), np.int64)
    if any(value is None for value in (starts, ends, axes, steps)) or len(starts) != 1 or steps[0] <= 0:
        return None
    rank = len(graph.shapes.get(node.input[0], ())) or 4
    if int(axes[0]) % rank != CHANNEL_AXIS:
        return None
    return slice(int(starts[0]), int(min(ends[0], np.iinfo(np.int64).max)), int(steps[0]))


# ---- zero padding for max pools -----------------------------------------------------------------------


def _zero_pad_max_pools(graph: _Graph) -> int:
    from onnx import helper

    rewritten = 0
    for pool in [node for node in graph.graph.node if node.op_type == "MaxPool"]:
        if not _plain_max_pool(pool) or not _non_negative(graph, pool.input[0]):
            continue
        pads = _padding_read(graph, pool)
        if not pads or not any(pads):
            continue
        spatial = len(pads) // 2
        onnx_pads = np.array([0, 0, *pads[:spatial], 0, 0, *pads[spatial:]], dtype=np.int64)
        padded = f"{pool.output[0]}/zero_padded"
        pad = helper.make_node("Pad", [pool.input[0], graph.add_constant("max_pool_pads", onnx_pads)], [padded],
                               name=f"{pool.name}/zero_pad", mode="constant")
        unpadded = _copy(pool)
        unpadded.input[0] = padded
        kept = [a for a in unpadded.attribute if a.name not in ("pads", "ceil_mode")]
        del unpadded.attribute[:]
        unpadded.attribute.extend(kept)
        graph.replace_nodes([pool], [pad, unpadded])
        rewritten += 1
    return rewritten


def _plain_max_pool(pool) -> bool:
    """Explicit pads only, no dilation, one output."""
    auto_pad = attribute(pool, "auto_pad", b"NOTSET")
    dilations = attribute(pool, "dilations", None)
    return (auto_pad in (b"NOTSET", "NOTSET", b"", "") and (dilations is None or all(d == 1 for d in dilations))
            and len(pool.output) == 1)


def _padding_read(graph: _Graph, pool) -> list[int] | None:
    """The pool's pads (begin..., end...), with ceil mode's extra last windows (SqueezeNet's pools) as more
    end padding: a zero Pad of that size and a floor-mode pool give the same windows. None when ceil mode
    meets unknown shapes."""
    kernel = list(attribute(pool, "kernel_shape", []))
    strides = list(attribute(pool, "strides", [1] * len(kernel)))
    pads = list(attribute(pool, "pads", [0] * 2 * len(kernel)))
    if not attribute(pool, "ceil_mode", 0):
        return pads
    in_shape, out_shape = graph.shapes.get(pool.input[0]), graph.shapes.get(pool.output[0])
    if in_shape is None or out_shape is None:
        return None
    spatial = len(kernel)
    for axis in range(spatial):
        last_window_end = (out_shape[2 + axis] - 1) * strides[axis] + kernel[axis]
        pads[spatial + axis] = max(pads[spatial + axis], last_window_end - in_shape[2 + axis] - pads[axis])
    return pads


def _non_negative(graph: _Graph, tensor: str) -> bool:
    """Whether `tensor` is never negative: made by a ReLU or a Clip at >= 0, or a Concat or MaxPool of such
    tensors (SqueezeNet's fire modules concatenate two ReLU outputs before a pool)."""
    producer = graph.producers.get(tensor)
    if producer is None:
        return False
    if producer.op_type == "Relu":
        return True
    if producer.op_type == "Clip" and len(producer.input) > 1 and producer.input[1]:
        low = graph.constant(producer.input[1])
        return low is not None and float(low) >= 0.0
    if producer.op_type == "Concat":
        return all(_non_negative(graph, source) for source in producer.input)
    if producer.op_type == "MaxPool":
        return _non_negative(graph, producer.input[0])
    return False

