"""Divergence localization: where an artifact's error against the ONNX reference enters, layer by layer.

Both graphs run on the same validation photos; every artifact tensor that can be paired with an ONNX tensor
is compared with it. How tensors are paired (onnx2tf does not keep ONNX node names on TFLite tensors: they
carry Keras op names such as `model_3/tf.nn.relu6_35/Relu6`, so names cannot be used):

1. Weighted layers (ONNX Conv, Gemm, MatMul with a constant weight; TFLite CONV_2D, DEPTHWISE_CONV_2D,
   FULLY_CONNECTED) are paired by their weights. In ONNX graph order, each layer takes the unpaired
   artifact op whose weight tensor has the same shape (in ONNX layout) and the most similar values (cosine;
   int8 and float16 weights dequantized). When no candidate's weights resemble them (cosine < 0.5: the
   weights were replaced), the first same-shape candidate in graph order is taken. ncnn layers (Convolution,
   ConvolutionDepthWise, InnerProduct) carry only their weight shape, so they pair by shape and graph order.
2. An artifact op that fuses its activation (RELU, RELU6) is compared with the output of the ONNX
   activation that is its layer's only consumer; otherwise with the layer's own output.
3. Other math ops (Add, Mul, pooling, Concat, activations) are paired by structure: an artifact op whose
   inputs are all paired tensors is paired with the one ONNX node of a matching type that reads exactly the
   corresponding ONNX tensors.
4. The graph input is compared as well when the artifact quantizes it.

Layout ops (PAD, RESHAPE, TRANSPOSE) are not compared; Split and (de)quantize ops pass their input on. ONNX
weighted layers left without a partner are reported as unmatched, with the reason.

Every artifact is compared with the published ONNX, which every target converted from (the int8 recipe edits
weights only: its rounding shows in the w.err column).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.artifact import to_onnx_shape
from core.errors import InputError
from core.manifest import ExportManifest, ManifestArtifact
from graph.explain_ops import PASS_THROUGH, ArtifactOp
from graph.onnx_view import OnnxView
from targets import get_target, interchange_target

DEFAULT_MAX_SAMPLES = 20
# The jump rule: the first layer, in graph order, whose increase in relative error over its input is at
# least this share of the largest increase any layer makes. The earliest big step is where to look; later
# layers often amplify an error that entered earlier.
JUMP_SHARE = 0.5
# Nothing is marked when no layer adds this much relative error: below it is float rounding (an fp32 artifact
# that fails its cosine gate of 0.99999 is already ~0.0045 away).
JUMP_FLOOR = 1e-3
# Below this weight cosine the artifact op's weights are not a copy of the ONNX layer's (rule 1).
SIMILAR_WEIGHTS = 0.5
GRAPH_INPUT = "input"


@dataclass(frozen=True)
class LayerError:
    depth: int  # position among compared layers, graph order
    onnx_layer: str  # ONNX node name of the layer (the Conv of a Conv+Clip)
    onnx_op: str  # "Conv+Clip"
    onnx_tensor: str  # the ONNX tensor compared
    artifact_op: str  # "CONV_2D"
    artifact_tensor: str
    shape: tuple[int, ...]  # NCHW, as in ONNX
    cosine: float  # mean over samples
    relative_error: float  # sqrt(sum |a - r|^2 / sum |r|^2) over all samples
    input_relative_error: float  # the largest relative error of the compared tensors this layer reads
    weight_relative_error: float | None  # |w_artifact - w_reference| / |w_reference|, weighted layers only

    @property
    def increase(self) -> float:
        return self.relative_error - self.input_relative_error

    @property
    def growth(self) -> float | None:
        return self.relative_error / self.input_relative_error if self.input_relative_error > 0 else None


@dataclass(frozen=True)
class OutputError:
    """Where one of the model's outputs gets its error: the compared layer nearest above it and the jump rule
    over the layers it reads (a model with several outputs can lose one in its own head)."""

    output: str  # the ONNX output's name
    layer: int | None  # depth of the nearest compared layer above it (its relative error is the output's)
    relative_error: float | None
    jump_depth: int | None  # the jump rule over the compared layers this output reads


@dataclass(frozen=True)
class ExplainReport:
    artifact: str  # file name
    runtime: str
    precision: str
    reference: str
    samples: int
    layers: tuple[LayerError, ...]
    jump_depth: int | None  # the layer the jump rule marks
    unmatched: tuple[str, ...]  # "ONNX layer: why"
    notes: tuple[str, ...] = ()
    outputs: tuple[OutputError, ...] = ()  # one per output of the model, in its order
    rule: str = (f"the first layer whose increase in relative error over its input is at least "
                 f"{JUMP_SHARE:.0%} of the largest increase (none when no layer adds {JUMP_FLOOR:g})")

    @property
    def jump(self) -> LayerError | None:
        return None if self.jump_depth is None else self.layers[self.jump_depth]

    def to_json(self) -> dict:
        record = asdict(self)
        for layer, row in zip(self.layers, record["layers"]):
            row.update(increase=layer.increase, growth=layer.growth, shape=list(layer.shape))
        record["jump"] = None if self.jump is None else record["layers"][self.jump_depth]
        return record


def explain_artifact(manifest: ExportManifest, entry: ManifestArtifact, validation: np.ndarray,
                     max_samples: int = DEFAULT_MAX_SAMPLES) -> ExplainReport:
    """Compare one artifact of an export with its ONNX reference on `validation` samples (the export's own, or
    the user's)."""
    model_dir = manifest.folder
    reference, reference_text = _reference_graph(manifest)
    notes: list[str] = []
    artifact = get_target(entry.runtime).explain_graph(entry.artifact(model_dir))
    if artifact is None:
        raise InputError(f"{entry.path} is a {entry.runtime} artifact, which explain cannot read",
                         hint=f"pass --artifact with one of: {', '.join(explainable_names(manifest))}")
    notes += list(getattr(artifact, "notes", ()))
    pairs, unmatched = pair_layers(OnnxGraph(reference), artifact)
    batch = manifest.input_shape[0]
    samples = validation[: max(batch, max_samples // batch * batch)]
    layers, dropped = _measure(reference, artifact, pairs, samples)
    notes += _weight_notes(layers)
    return ExplainReport(
        artifact=entry.name, runtime=entry.runtime, precision=entry.precision,
        reference=reference_text, samples=len(samples), layers=layers, jump_depth=jump_depth(layers),
        unmatched=tuple(unmatched + dropped), notes=tuple(notes), outputs=output_errors(reference, layers),
    )


def output_errors(reference_model, layers: tuple[LayerError, ...]) -> tuple[OutputError, ...]:
    """Per output of the ONNX model: the nearest compared layer above it, and where the jump rule puts the
    error among the compared layers it reads."""
    graph = OnnxGraph(reference_model)
    by_tensor = {layer.onnx_tensor: layer for layer in layers}
    upstream = _Upstream(graph, set(by_tensor))
    found = []
    for output in (value.name for value in reference_model.graph.output):
        nearest = sorted((by_tensor[name] for name in upstream.tensor(output)), key=lambda layer: layer.depth)
        if not nearest:
            found.append(OutputError(output, None, None, None))
            continue
        feeding = _feeding_layers(nearest, by_tensor, upstream)
        jump = jump_depth(feeding)
        found.append(OutputError(output, nearest[-1].depth, nearest[-1].relative_error,
                                 None if jump is None else feeding[jump].depth))
    return tuple(found)


def _feeding_layers(nearest: list[LayerError], by_tensor: dict[str, LayerError], upstream) -> tuple[LayerError, ...]:
    """Every compared layer an output reads, directly or through others, in graph order."""
    seen: dict[int, LayerError] = {}
    stack = list(nearest)
    while stack:
        layer = stack.pop()
        if layer.depth in seen:
            continue
        seen[layer.depth] = layer
        producer = upstream.graph.producers.get(layer.onnx_tensor)
        inputs = upstream.of_node(producer) if producer is not None else set()
        stack += [by_tensor[name] for name in inputs if name in by_tensor]
    return tuple(layer for _, layer in sorted(seen.items()))


def jump_depth(layers: tuple[LayerError, ...]) -> int | None:
    increases = [layer.increase for layer in layers]
    if not increases or max(increases) < JUMP_FLOOR:
        return None
    threshold = JUMP_SHARE * max(increases)
    return next(depth for depth, increase in enumerate(increases) if increase >= threshold)


def save_report(report: ExplainReport, path: Path) -> None:
    path.write_text(json.dumps(report.to_json(), indent=2) + "\n", encoding="utf-8")


def explain_json_path(model_dir: Path, artifact_file: str) -> Path:
    """Where explain saves its findings, so the HTML report can show them."""
    return model_dir / f"{Path(artifact_file).stem}.explain.json"


# ---- the export's manifest and data ---------------------------------------------------------------------


def explainable_names(manifest: ExportManifest) -> list[str]:
    return [a.name for a in manifest.artifacts if get_target(a.runtime).explainable]


def find_artifact(manifest: ExportManifest, key: str) -> ManifestArtifact:
    """`key` is a file name, or a precision (int8, fp16, fp32): the first explainable artifact of it, which is
    the TFLite one when the export has TFLite (the manifest lists artifacts in registry order)."""
    by_name = [a for a in manifest.artifacts if a.name == key or a.path == key]
    by_precision = [a for a in manifest.artifacts if a.precision == key and get_target(a.runtime).explainable]
    found = by_name or by_precision
    if not found:
        names = ", ".join(a.name for a in manifest.artifacts)
        raise InputError(f"no artifact {key!r} in this export", hint=f"pass int8, fp16, fp32 or one of: {names}")
    if not get_target(found[0].runtime).explainable:
        raise InputError(f"{found[0].path} is a {found[0].runtime} artifact, which explain cannot read",
                         hint=f"pass --artifact with one of: {', '.join(explainable_names(manifest))}")
    return found[0]


def _reference_graph(manifest: ExportManifest):
    """The export's ONNX model, which every artifact was converted from (its int8 recipe edits weights only)."""
    import onnx

    interchange = manifest.of_runtime(interchange_target().name)
    if not interchange:
        raise InputError("the export has no ONNX artifact to compare with", hint="re-run the export")
    return onnx.load(str(manifest.folder / interchange[0].path)), f"{interchange[0].path} in ONNX Runtime"


def _weight_notes(layers: tuple[LayerError, ...]) -> list[str]:
    weights = [layer for layer in layers if layer.weight_relative_error is not None]
    damaged = [layer for layer in weights if layer.weight_relative_error > 0.25]
    if not damaged:
        return []
    names = ", ".join(f"{layer.onnx_layer} ({layer.weight_relative_error:.2f})" for layer in damaged[:5])
    return [f"{len(damaged)} layer(s) hold weights more than 25 % away from the reference's: {names}"]


# ---- the two graphs -------------------------------------------------------------------------------------


# Artifact ops paired by structure (rule 3), with the ONNX op types each may stand for.
STRUCTURAL_KINDS: dict[str, tuple[str, ...]] = {
    "ADD": ("Add", "Sum"), "MUL": ("Mul",), "SUB": ("Sub",), "DIV": ("Div",),
    "MEAN": ("GlobalAveragePool", "ReduceMean"), "AVERAGE_POOL_2D": ("AveragePool", "GlobalAveragePool"),
    "MAX_POOL_2D": ("MaxPool",), "CONCATENATION": ("Concat",), "RELU": ("Relu",), "RELU6": ("Clip", "Relu6"),
    "HARD_SWISH": ("HardSwish",), "LOGISTIC": ("Sigmoid",), "SOFTMAX": ("Softmax",), "TANH": ("Tanh",),
}
ONNX_WEIGHTED = ("Conv", "Gemm", "MatMul")
ONNX_ACTIVATIONS = ("Relu", "Clip", "Relu6")


class OnnxGraph(OnnxView):
    """The reference graph, with the questions pairing asks of it."""

    def weight(self, node) -> np.ndarray | None:
        """A weighted node's constant weight in the layout TFLite's is brought to (OIHW, or out x in)."""
        if node.op_type not in ONNX_WEIGHTED or len(node.input) < 2 or node.input[1] not in self.initializers:
            return None
        weight = self.array(node.input[1]).astype(np.float32)
        transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
        if node.op_type in ("Gemm", "MatMul") and not transposed:
            weight = weight.T
        return weight

    def only_activation_after(self, node):
        users = self.consumers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type in ONNX_ACTIVATIONS:
            return users[0]
        return None


@dataclass(frozen=True)
class LayerPair:
    onnx_nodes: tuple  # the layer's node and, when the artifact fused it, its activation
    onnx_tensor: str
    artifact_op: ArtifactOp
    artifact_tensor: object  # the artifact's tensor id: a TFLite tensor index, an ncnn blob name
    weight_relative_error: float | None

    @property
    def onnx_layer(self) -> str:
        return self.onnx_nodes[0].name if self.onnx_nodes else GRAPH_INPUT

    @property
    def onnx_op(self) -> str:
        return "+".join(node.op_type for node in self.onnx_nodes) or "input"


def pair_layers(onnx_graph: OnnxGraph, artifact) -> tuple[list[LayerPair], list[str]]:
    """Artifact ops paired with ONNX tensors (rules 1-4 of the module docstring), in artifact graph order."""
    weighted = _pair_weighted(onnx_graph, artifact)
    unmatched = [f"{node.name} ({node.op_type}): {why}" for node, why in weighted.pop(None, [])]
    aliases = {artifact.input: onnx_graph.input_name}
    pairs: list[LayerPair] = []
    for op in artifact.ops:
        node = weighted.get(op.index)
        if node is None:
            node = _pair_by_structure(onnx_graph, op, aliases)
        if node is None:
            if op.kind in PASS_THROUGH and op.inputs and op.inputs[0] in aliases:
                aliases.update({output: aliases[op.inputs[0]] for output in op.outputs})
                if op.kind == "QUANTIZE" and op.inputs[0] == artifact.input:
                    pairs.append(LayerPair((), onnx_graph.input_name, op, op.outputs[0], None))
            continue
        nodes = (node,)
        activation = onnx_graph.only_activation_after(node) if op.fused_activation else None
        if activation is not None:
            nodes = (node, activation)
        aliases[op.outputs[0]] = nodes[-1].output[0]
        weight_error = _relative_difference(op.weight, onnx_graph.weight(node)) if op.weight is not None else None
        pairs.append(LayerPair(nodes, nodes[-1].output[0], op, op.outputs[0], weight_error))
    return pairs, unmatched


def _pair_weighted(onnx_graph: OnnxGraph, artifact) -> dict:
    """{artifact op index: ONNX node}, and under None the ONNX layers no artifact op matched, with why."""
    free = [op for op in artifact.ops if op.weight_shape is not None]
    paired: dict = {None: []}
    for node in onnx_graph.model.graph.node:
        weight = onnx_graph.weight(node)
        if weight is None:
            continue
        candidates = [op for op in free if op.weight_shape == weight.shape]
        if not candidates:
            paired[None].append((node, f"no artifact op has a {'x'.join(map(str, weight.shape))} weight"))
            continue
        similarity = [abs(_cosine(op.weight, weight)) if op.weight is not None else 0.0 for op in candidates]
        best = int(np.argmax(similarity)) if max(similarity) >= SIMILAR_WEIGHTS else 0
        free.remove(candidates[best])
        paired[candidates[best].index] = node
    return paired


def _pair_by_structure(onnx_graph: OnnxGraph, op: ArtifactOp, aliases: dict):
    types = STRUCTURAL_KINDS.get(op.kind)
    if types is None or not op.inputs or any(index not in aliases for index in op.inputs):
        return None
    wanted = sorted(aliases[index] for index in op.inputs)
    readers = {id(node): node for name in wanted for node in onnx_graph.consumers.get(name, [])}
    found = [node for node in readers.values()
             if node.op_type in types and sorted(onnx_graph.data_inputs(node)) == wanted]
    return found[0] if len(found) == 1 else None


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else 0.0


def _relative_difference(artifact: np.ndarray, reference: np.ndarray | None) -> float | None:
    if reference is None or artifact.shape != reference.shape:
        return None
    norm = np.linalg.norm(reference)
    return float(np.linalg.norm(artifact - reference) / norm) if norm > 0 else None


# ---- running both and measuring -------------------------------------------------------------------------


@dataclass
class _Sums:
    squared_difference: float = 0.0
    squared_reference: float = 0.0
    cosines: list = field(default_factory=list)

    def add(self, artifact: np.ndarray, reference: np.ndarray) -> None:
        a = artifact.reshape(len(artifact), -1).astype(np.float64)
        r = reference.reshape(len(reference), -1).astype(np.float64)
        self.squared_difference += float(((a - r) ** 2).sum())
        self.squared_reference += float((r**2).sum())
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(r, axis=1)
        same = np.abs(a - r).max(axis=1) == 0
        with np.errstate(invalid="ignore", divide="ignore"):
            self.cosines += np.where(norms > 0, (a * r).sum(axis=1) / norms, np.where(same, 1.0, 0.0)).tolist()

    @property
    def relative_error(self) -> float:
        if self.squared_reference == 0:
            return 0.0 if self.squared_difference == 0 else float("inf")
        return float(np.sqrt(self.squared_difference / self.squared_reference))


def _measure(reference_model, artifact, pairs: list[LayerPair], samples: np.ndarray):
    from graph.onnx_run import inner_tensors

    names = list(dict.fromkeys(pair.onnx_tensor for pair in pairs))
    batch = _onnx_batch(reference_model)
    sums = [_Sums() for _ in pairs]
    shapes: dict[int, tuple[int, ...]] = {}
    kept = list(range(len(pairs)))
    dropped: list[str] = []
    for start, reference in zip(range(0, len(samples), batch), inner_tensors(reference_model, names, samples)):
        values = artifact.run(samples[start : start + batch], [pair.artifact_tensor for pair in pairs])
        for position in list(kept):
            pair = pairs[position]
            aligned = to_onnx_shape(values[pair.artifact_tensor], reference[pair.onnx_tensor].shape)
            if aligned is None:
                kept.remove(position)
                dropped.append(f"{pair.onnx_layer} ({pair.onnx_op}): artifact tensor shape "
                               f"{values[pair.artifact_tensor].shape} does not lay out as "
                               f"{reference[pair.onnx_tensor].shape}")
                continue
            sums[position].add(aligned, reference[pair.onnx_tensor])
            shapes[position] = tuple(int(d) for d in reference[pair.onnx_tensor].shape)
    errors = {pairs[p].onnx_tensor: sums[p].relative_error for p in kept}
    upstream = _Upstream(OnnxGraph(reference_model), set(errors))
    layers = []
    for depth, position in enumerate(kept):
        pair, total = pairs[position], sums[position]
        inputs = upstream.of_layer(pair)
        layers.append(LayerError(
            depth=depth, onnx_layer=pair.onnx_layer, onnx_op=pair.onnx_op, onnx_tensor=pair.onnx_tensor,
            artifact_op=pair.artifact_op.label, artifact_tensor=artifact.tensor_name(pair.artifact_tensor),
            shape=shapes[position],
            cosine=float(np.mean(total.cosines)), relative_error=total.relative_error,
            input_relative_error=max((errors.get(name, 0.0) for name in inputs), default=0.0),
            weight_relative_error=pair.weight_relative_error,
        ))
    return tuple(layers), dropped


def _onnx_batch(model) -> int:
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.dim_value > 0 else 1


class _Upstream:
    """The compared tensors nearest above a layer in the ONNX graph: where its input error comes from."""

    def __init__(self, graph: OnnxGraph, compared: set[str]):
        self.graph, self._compared, self._memo = graph, compared, {}

    def of_layer(self, pair: LayerPair) -> set[str]:
        return self.of_node(pair.onnx_nodes[0]) if pair.onnx_nodes else set()

    def of_node(self, node) -> set[str]:
        """The compared tensors nearest above the node's data inputs."""
        found: set[str] = set()
        for name in self.graph.data_inputs(node):
            found |= self.tensor(name)
        return found

    def tensor(self, name: str) -> set[str]:
        """The tensor itself when it is compared, else the compared tensors nearest above it."""
        if name in self._compared:
            return {name}
        if name not in self._memo:
            producer = self.graph.producers.get(name)
            found: set[str] = set()
            for upper in self.graph.data_inputs(producer) if producer is not None else ():
                found |= self.tensor(upper)
            self._memo[name] = found
        return self._memo[name]
