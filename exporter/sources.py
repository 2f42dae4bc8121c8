"""Model sources: zoo names, user factories, TorchScript, ExportedProgram, ONNX; plus --weights."""
from __future__ import annotations

import importlib
import pickle
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import InputError

SOURCE_FORMS = (
    "zoo:NAME, python:package.module:factory, a TorchScript .pt, an ExportedProgram .pt2, or an .onnx file"
)


@dataclass(frozen=True)
class LoadedModel:
    name: str  # used for the output folder and file names
    source: str
    module: object | None  # torch.nn.Module in eval mode; None when the source is an ONNX file
    onnx_path: Path | None  # the source file, when the source is ONNX
    labels: tuple[str, ...] | None
    weights: str | None  # where the weights came from, for the manifest


def load_model(source: str, weights: str | None = None, trust_pickle: bool = False) -> LoadedModel:
    if source.startswith("zoo:"):
        return _from_zoo(source, weights, trust_pickle)
    if source.startswith("python:"):
        return _from_factory(source, weights, trust_pickle)
    path = Path(source)
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".pt2", ".onnx") and not path.is_file():
        raise InputError(f"model file {path} does not exist", hint="check the path given to --model")
    if suffix == ".onnx":
        if weights:
            raise InputError("--weights cannot be applied to an ONNX model", hint="drop --weights; ONNX files carry their weights")
        return LoadedModel(path.stem, source, None, path, None, "embedded in the ONNX file")
    if suffix in (".pt", ".pth"):
        module = _load_torchscript_or_pickled_module(path, trust_pickle)
    elif suffix == ".pt2":
        module = _load_exported_program(path)
    else:
        raise InputError(f"unknown model source {source!r}", hint=f"--model takes {SOURCE_FORMS}")
    return _finish(path.stem, source, module, weights, trust_pickle, labels=None)


def _from_zoo(source: str, weights: str | None, trust_pickle: bool) -> LoadedModel:
    from exporter.zoo import ZOO, imagenet_labels

    name = source.removeprefix("zoo:")
    if name not in ZOO:
        raise InputError(f"unknown zoo model {name!r}", hint=f"choose one of: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    module = entry.build()
    labels = None
    if weights is None and entry.pretrained_weights is not None:
        weights = str(entry.pretrained_weights())
        labels = tuple(imagenet_labels())
    return _finish(name, source, module, weights, trust_pickle, labels)


def _from_factory(source: str, weights: str | None, trust_pickle: bool) -> LoadedModel:
    import torch

    target = source.removeprefix("python:")
    module_name, _, factory_name = target.partition(":")
    if not module_name or not factory_name:
        raise InputError(
            f"model source {source!r} is not python:package.module:factory",
            hint="e.g. --model python:my_pkg.models:build, where build() returns a torch.nn.Module",
        )
    # Like `python -m`, let a factory in the current folder be found without installing it.
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        python_module = importlib.import_module(module_name)
    except Exception as error:  # any exception while importing user code is the user's input at fault
        raise InputError(
            f"cannot import {module_name!r} for --model {source}: {type(error).__name__}: {error}",
            hint="make the module importable (pip install -e your package, or run from its parent folder)",
        ) from None
    factory = getattr(python_module, factory_name, None)
    if not callable(factory):
        raise InputError(
            f"{module_name} has no callable {factory_name!r}",
            hint="name a function or class that takes no arguments and returns a torch.nn.Module",
        )
    try:
        module = factory()
    except Exception as error:
        raise InputError(
            f"{module_name}.{factory_name}() raised {type(error).__name__}: {error}",
            hint="the factory must build the model with no arguments",
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(
            f"{module_name}.{factory_name}() returned {type(module).__name__}, not a torch.nn.Module",
            hint="return the model instance from the factory",
        )
    return _finish(factory_name if factory_name not in ("build", "create", "model") else module_name.rsplit(".", 1)[-1],
                   source, module, weights, trust_pickle, labels=None)


def _load_torchscript_or_pickled_module(path: Path, trust_pickle: bool):
    import torch

    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a PyTorch archive", hint="pass a TorchScript .pt saved with torch.jit.save")
    with zipfile.ZipFile(path) as archive:
        is_torchscript = any(name.endswith("/code/__torch__.py") or "/code/" in name for name in archive.namelist())
    if is_torchscript:
        try:
            return torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise InputError(f"cannot load TorchScript {path}: {error}", hint="re-save it with torch.jit.save") from None
    if not trust_pickle:
        raise InputError(
            f"{path} is a pickled Python object, not TorchScript: loading it would run code from the file",
            hint="save the model with torch.jit.save or torch.export, pass a state_dict with --weights, "
            "or pass --trust-pickle if you trust where the file came from",
        )
    loaded = torch.load(str(path), map_location="cpu", weights_only=False)
    if not isinstance(loaded, torch.nn.Module):
        raise InputError(
            f"{path} holds a {type(loaded).__name__}, not a model",
            hint="a state_dict goes to --weights together with a --model that builds the architecture",
        )
    return loaded


def _load_exported_program(path: Path):
    import torch

    try:
        graph_module = torch.export.load(str(path)).module()
    except Exception as error:
        raise InputError(f"cannot load ExportedProgram {path}: {error}", hint="save it with torch.export.save") from None
    from exporter.exported_program import ExportedProgramModule

    return ExportedProgramModule(graph_module)


def _finish(name, source, module, weights, trust_pickle, labels) -> LoadedModel:
    if weights is not None:
        _apply_state_dict(module, load_state_dict(Path(weights), trust_pickle), weights)
    _refuse_non_finite_weights(module, source)
    module.eval()
    return LoadedModel(name, source, module, None, labels, weights)


def load_state_dict(path: Path, trust_pickle: bool = False) -> dict:
    import torch

    if not path.is_file():
        raise InputError(f"weights file {path} does not exist", hint="check the path given to --weights")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise InputError(f"cannot read {path}: {error}", hint="the .safetensors file looks damaged") from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError:
        raise InputError(
            f"{path} contains pickled Python objects besides tensors: loading it would run code from the file",
            hint="save only model.state_dict() (or use .safetensors), or pass --trust-pickle if you trust its source",
        ) from None
    except Exception as error:
        raise InputError(f"cannot read weights {path}: {type(error).__name__}: {error}",
                         hint="pass a state_dict saved with torch.save(model.state_dict(), path)") from None
    return _unwrap_state_dict(state, path)


def _unwrap_state_dict(state, path: Path) -> dict:
    import torch

    if isinstance(state, torch.nn.Module):
        return state.state_dict()
    for wrapper_key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper_key), dict):
            state = state[wrapper_key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state_dict of tensors", hint="save model.state_dict()")
    # Checkpoints saved from DataParallel prefix every key with "module.".
    if state and all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _apply_state_dict(module, state: dict, weights: str) -> None:
    import torch

    if isinstance(module, torch.jit.ScriptModule):
        raise InputError("--weights cannot be applied to a TorchScript model", hint="drop --weights")
    expected = module.state_dict()
    problems = {
        "missing": [k for k in expected if k not in state],
        "unexpected": [k for k in state if k not in expected],
        "wrong shape": [k for k, v in state.items() if k in expected and expected[k].shape != v.shape],
    }
    details = [f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})" for label, keys in problems.items() if keys]
    if details:
        raise InputError(
            f"weights {weights} do not fit the model: " + "; ".join(details),
            hint="pass the weights saved from this architecture (same width multiplier and number of classes)",
        )
    module.load_state_dict(state, strict=True)


def _refuse_non_finite_weights(module, source: str) -> None:
    import torch

    for name, tensor in module.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise InputError(
                f"weight {name} of {source} contains NaN or Inf",
                hint="the checkpoint is damaged or training diverged; export a healthy checkpoint",
            )
