"""The one reader of ncnn's text `.param` format, for the ncnn target, explain and the cost model.

Format: the magic line `7767517`, a line `<layer count> <blob count>`, then one line per layer:
`<type> <name> <input count> <output count> <inputs...> <outputs...> <key=value...>`. Array parameters are
written with key -23300 - k as `count,v1,v2,...`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError

MAGIC = "7767517"
_ARRAY_KEY_BASE = -23300


@dataclass(frozen=True)
class NcnnLayer:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict[int, object]  # int/float, or a tuple for array params (key stored without the -23300 offset)

    def get(self, key: int, default: object = 0) -> object:
        return self.params.get(key, default)

    def array(self, key: int) -> tuple:
        value = self.params.get(key, ())
        return value if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class Endpoints:
    """Which blobs a graph is fed through and read from, and how many layers of each type it holds."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]  # blobs some layer writes and no layer reads, in the order they are written
    layer_counts: dict[str, int]  # Input layers not counted


def parse_ncnn_param(path: Path) -> tuple[NcnnLayer, ...]:
    lines = [line.split() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    if not lines or lines[0] != [MAGIC]:
        raise InputError(f"{path} is not an ncnn text .param file (no {MAGIC} magic)",
                         hint="pass the .param file written next to the .bin")
    layers = []
    for fields in lines[2:]:
        if len(fields) < 4:
            continue
        layer_type, name, n_in, n_out = fields[0], fields[1], int(fields[2]), int(fields[3])
        inputs = tuple(fields[4:4 + n_in])
        outputs = tuple(fields[4 + n_in:4 + n_in + n_out])
        params = dict(_parse_param(item) for item in fields[4 + n_in + n_out:] if "=" in item)
        layers.append(NcnnLayer(layer_type, name, inputs, outputs, params))
    return tuple(layers)


def endpoints(layers: tuple[NcnnLayer, ...]) -> Endpoints:
    inputs, produced, consumed, counts = [], [], set(), {}
    for layer in layers:
        if layer.type == "Input":
            inputs += layer.outputs
            continue
        counts[layer.type] = counts.get(layer.type, 0) + 1
        consumed.update(layer.inputs)
        produced += layer.outputs
    outputs = tuple(blob for blob in produced if blob not in consumed)
    return Endpoints(tuple(inputs), outputs, dict(sorted(counts.items())))


def _parse_param(item: str) -> tuple[int, object]:
    key_text, value_text = item.split("=", 1)
    key = int(key_text)
    if key <= _ARRAY_KEY_BASE:
        values = tuple(_number(v) for v in value_text.split(",")[1:])
        return _ARRAY_KEY_BASE - key, values
    return key, _number(value_text)


def _number(text: str) -> int | float:
    return float(text) if any(ch in text for ch in ".eE") and not text.lstrip("-").isdigit() else int(text)
