"""The target registry: adding a runtime is one folder here and one line in REGISTRY.

Everything outside targets/ asks this registry what a runtime offers (core/target.py); nothing outside
switches on a runtime's name. --target groups are derived from it: each target's own name, each platform
("android": every target that ships there), and "all".
"""
from __future__ import annotations

from importlib import import_module

from core.target import Target

ALL_TARGETS = "all"


def _registered(*classes: str) -> dict[str, Target]:
    """"package.module:Class" -> an instance of each, keyed by its name, in the order given (the order of
    the manifest's artifacts and of each group's targets)."""
    targets = []
    for spec in classes:
        module, _, name = spec.partition(":")
        targets.append(getattr(import_module(module), name)())
    return {target.name: target for target in targets}


REGISTRY: dict[str, Target] = _registered(
    "targets.onnx:OnnxRuntimeTarget",
    "targets.tflite:TFLiteTarget",
    "targets.ncnn:NcnnTarget",
    "targets.coreml:CoreMLTarget",
    "targets.executorch:ExecuTorchTarget",
)


def get_target(name: str) -> Target:
    if name not in REGISTRY:
        raise KeyError(f"no target {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def interchange_target() -> Target:
    """The target of the ONNX model every export holds and every other target converts from."""
    return next(target for target in REGISTRY.values() if target.interchange)


def target_groups() -> dict[str, tuple[str, tuple[str, ...]]]:
    """--target value -> (the platform its artifacts are recorded under, the targets it builds)."""
    targets = [target for target in REGISTRY.values() if target.platforms]
    groups: dict[str, tuple[str, tuple[str, ...]]] = {}
    for platform in dict.fromkeys(p for target in targets for p in target.platforms):
        groups[platform] = (platform, tuple(t.name for t in targets if platform in t.platforms and t.in_platform_groups))
    for target in targets:
        groups[target.name] = (target.platforms[0], (target.name,))
    groups[ALL_TARGETS] = (ALL_TARGETS, tuple(t.name for t in targets))
    return groups


def profile_runtimes() -> tuple[str, ...]:
    """The runtime libraries device profiles may name."""
    return tuple(target.profile_runtime for target in REGISTRY.values() if target.profile_runtime)


def target_of_profile_runtime(profile_runtime: str) -> Target | None:
    return next((t for t in REGISTRY.values() if t.profile_runtime == profile_runtime), None)
