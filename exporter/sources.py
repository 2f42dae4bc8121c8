"""Model sources: zoo names, user factories, TorchScript, ExportedProgram, ONNX; plus --weights."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import pickle
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError

SOURCE_FORMS = (
    "zoo:NAME, python:package.module:factory, a TorchScript .pt, an ExportedProgram .pt2, or an .onnx file"
)
MAX_ONNX_BYTES = 2 * 1024**3  # protobuf's own limit for one message, external data included once embedded
MAX_ARCHIVE_BYTES = 4 * 1024**3  # what a PyTorch archive may unpack to: far above any mobile model
# The name becomes a folder and file names under --out: nothing that could climb out of it or hide.
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")


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
        read_onnx_source(path)
        return LoadedModel(_safe_name(path.stem, source), source, None, path, None, "embedded in the ONNX file")
    if suffix in (".pt", ".pth"):
        module = _load_torchscript_or_pickled_module(path, trust_pickle)
    elif suffix == ".pt2":
        module = _load_exported_program(path, trust_pickle)
    else:
        raise InputError(f"unknown model source {source!r}", hint=f"--model takes {SOURCE_FORMS}")
    return _finish(_safe_name(path.stem, source), source, module, weights, trust_pickle, labels=None)


def _safe_name(name: str, source: str) -> str:
    if not SAFE_NAME.fullmatch(name):
        raise InputError(
            f"the model name {name!r} taken from --model {source} cannot name an output folder",
            hint="rename the file (or factory) to letters, digits, '_', '-', '.' and '+', not starting with '.'",
        )
    return name


def _from_zoo(source: str, weights: str | None, trust_pickle: bool) -> LoadedModel:
    from exporter.zoo import CLASSIFIER, ZOO, digits, imagenet_labels

    name = source.removeprefix("zoo:")
    if name not in ZOO:
        raise InputError(f"unknown zoo model {name!r}", hint=f"choose one of: {', '.join(sorted(ZOO))}")
    entry = ZOO[name]
    labels = None
    if weights is None and entry.pretrained_weights is not None:
        weights = str(entry.pretrained_weights())
        labels = tuple(imagenet_labels()) if entry.task == CLASSIFIER else None
    elif digits.uses_digit_weights(name, weights):
        weights = str(digits.ensure_trained(name))
        labels = digits.LABELS
    module = _zoo_module(entry, weights, trust_pickle)
    return _finish(name, source, module, weights, trust_pickle, labels)


def _zoo_module(entry, weights: str | None, trust_pickle: bool):
    """The zoo model, its classifier sized like the checkpoint's (a model fine-tuned on 10 classes loads)."""
    module = entry.build()
    if weights is None:
        return module
    head = [key for key in module.state_dict() if key.endswith(".weight")][-1]
    state = load_state_dict(Path(weights), trust_pickle)
    if head in state and state[head].shape[0] != module.state_dict()[head].shape[0]:
        return entry.build(num_classes=int(state[head].shape[0]))
    return module


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
    except (Exception, SystemExit) as error:  # anything raised while importing user code is the user's input at fault
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
    except (Exception, SystemExit) as error:
        raise InputError(
            f"{module_name}.{factory_name}() raised {type(error).__name__}: {error}",
            hint="the factory must build the model with no arguments",
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise InputError(
            f"{module_name}.{factory_name}() returned {type(module).__name__}, not a torch.nn.Module",
            hint="return the model instance from the factory",
        )
    name = factory_name if factory_name not in ("build", "create", "model") else module_name.rsplit(".", 1)[-1]
    return _finish(_safe_name(name, source), source, module, weights, trust_pickle, labels=None)


def _load_torchscript_or_pickled_module(path: Path, trust_pickle: bool):
    import torch

    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not a PyTorch archive", hint="pass a TorchScript .pt saved with torch.jit.save")
    check_archive(path)
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


def _load_exported_program(path: Path, trust_pickle: bool):
    import torch

    if not zipfile.is_zipfile(path):
        raise InputError(f"{path} is not an ExportedProgram archive", hint="save it with torch.export.save")
    check_archive(path)
    if not trust_pickle:
        _refuse_pickled_objects_in_pt2(path)
    try:
        with _weights_only_torch_loads(enabled=not trust_pickle):
            graph_module = torch.export.load(str(path)).module()
    except pickle.UnpicklingError:
        raise _pickled_objects_error(path) from None
    except Exception as error:
        raise InputError(f"cannot load ExportedProgram {path}: {type(error).__name__}: {str(error)[:300]}",
                         hint="save it with torch.export.save") from None
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
    if zipfile.is_zipfile(path):
        check_archive(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError:
        raise _pickled_objects_error(path) from None
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


def _pickled_objects_error(path: Path) -> InputError:
    return InputError(
        f"{path} contains pickled Python objects besides tensors: loading it would run code from the file",
        hint="save only model.state_dict() (or use .safetensors), or pass --trust-pickle if you trust its source",
    )


def check_archive(path: Path) -> None:
    """A PyTorch zip archive whose entries stay inside it and unpack to a plausible size (no zip bomb)."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except Exception as error:  # a damaged directory raises BadZipFile, OSError, UnicodeDecodeError, ...
        raise InputError(f"{path} is a damaged archive: {error}", hint="re-save or re-download the file") from None
    unpacked = sum(entry.file_size for entry in entries)
    if unpacked > MAX_ARCHIVE_BYTES:
        raise InputError(f"{path} would unpack to {unpacked / 1024**3:.1f} GiB", hint="this is not a mobile model; check the file")
    escaping = [e.filename for e in entries if e.filename.startswith(("/", "\\")) or ".." in Path(e.filename).parts]
    if escaping:
        raise InputError(f"{path} holds entries that point outside the archive (e.g. {escaping[0]!r})",
                         hint="the file was tampered with; use a model file you saved yourself")


def _refuse_pickled_objects_in_pt2(path: Path) -> None:
    """torch.export.load unpickles custom and opaque objects with plain pickle: that would run code."""
    from torch.export.pt2_archive.constants import CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if not name.endswith("_constants_config.json"):
                continue
            try:
                config = json.loads(archive.read(name)).get("config", {})
            except (ValueError, AttributeError, zipfile.BadZipFile) as error:
                raise InputError(f"{path} has a damaged {name}: {error}", hint="re-save it with torch.export.save") from None
            pickled = [fqn for fqn, entry in config.items()
                       if str(entry.get("path_name", "")).startswith((CUSTOM_OBJ_FILENAME_PREFIX, OPAQUE_OBJ_FILENAME_PREFIX))]
            if pickled:
                raise _pickled_objects_error(path)


@contextlib.contextmanager
def _weights_only_torch_loads(enabled: bool):
    """torch.export.load calls torch.load(weights_only=False) for some payloads; torch lets this variable
    override the argument, so every unpickling inside accepts tensors and plain containers only."""
    variable = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
    previous = os.environ.get(variable)
    if enabled:
        os.environ[variable] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = previous


# ---- ONNX files from outside ------------------------------------------------------------------------------


def read_onnx_source(path: Path):
    """The ONNX model in `path` with its external data embedded, after checking it as untrusted input:
    a parseable file within size limits, external data files that stay inside the model's folder,
    a graph onnx.checker accepts, and finite weights."""
    import onnx

    if path.stat().st_size > MAX_ONNX_BYTES:
        raise InputError(f"{path} is larger than 2 GiB", hint="mobile models are far smaller; check the file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf raises DecodeError, RuntimeError or ValueError depending on the damage
        raise _unreadable_onnx(path, error) from None
    _check_external_data(model, path)
    try:
        onnx.load_external_data_for_model(model, str(path.parent))
        onnx.checker.check_model(model)
    except Exception as error:
        raise _unreadable_onnx(path, error) from None
    _refuse_non_finite_initializers(model, path)
    return model


def copy_checked_onnx(source: Path, destination: Path) -> None:
    """Write the checked model as one self-contained file (runtimes never read the user's folder again)."""
    import onnx

    onnx.save(read_onnx_source(source), str(destination))


def _unreadable_onnx(path: Path, error: Exception) -> InputError:
    first_line = (str(error).splitlines() or [""])[0][:300]
    return InputError(
        f"{path} is not a valid ONNX model ({type(error).__name__}: {first_line})",
        hint="the file is probably truncated or damaged: re-export or re-download it and check its size",
    )


def _check_external_data(model, path: Path) -> None:
    from onnx.external_data_helper import uses_external_data

    folder = path.parent.resolve()
    total = 0
    for tensor in _all_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        entry = {item.key: item.value for item in tensor.external_data}
        location = entry.get("location", "")
        resolved = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not resolved.is_relative_to(folder):
            raise InputError(
                f"{path} points tensor {tensor.name!r} to external data {location!r} outside the model's folder",
                hint="keep external data files next to the .onnx file, named by relative paths inside its folder",
            )
        if not resolved.is_file():
            raise InputError(f"the external data file {location} of {path} is missing",
                             hint="copy it next to the .onnx file")
        total += int(entry.get("length", resolved.stat().st_size))
    if total > MAX_ONNX_BYTES:
        raise InputError(f"{path} has {total / 1024**3:.1f} GiB of external data", hint="mobile models are far smaller")


def _all_tensors(graph):
    """Initializers and constant attributes, in this graph and every subgraph (If/Loop bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def _refuse_non_finite_initializers(model, path: Path) -> None:
    import numpy as np
    from onnx import numpy_helper

    for tensor in _all_tensors(model.graph):
        values = numpy_helper.to_array(tensor)
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            raise InputError(f"weight {tensor.name!r} of {path} contains NaN or Inf",
                             hint="the model is damaged or training diverged; export a healthy checkpoint")
