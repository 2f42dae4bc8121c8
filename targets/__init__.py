"""The target registry: adding a runtime is one module and one line here."""
from __future__ import annotations

from core.artifact import Target


def _registry() -> dict[str, Target]:
    from targets.coreml import CoreMLTarget
    from targets.ncnn import NcnnTarget
    from targets.tflite import TFLiteTarget

    return {"tflite": TFLiteTarget(), "ncnn": NcnnTarget(), "coreml": CoreMLTarget()}


def get_target(name: str) -> Target:
    targets = _registry()
    if name not in targets:
        raise KeyError(f"no target {name!r}; known: {', '.join(targets)}")
    return targets[name]
