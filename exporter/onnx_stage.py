"""The ONNX stage: export from PyTorch, simplify, check, describe. (targets/onnx/ runs the result.)"""
from __future__ import annotations

from pathlib import Path

from core.artifact import OnnxModel, TensorSpec
from core.capture import output_to
from core.contract import InputContract
from core.errors import ConverterError, InputError
from graph.passes.fold_batch_norm import fold_batch_norms

OPSET = 17


SINGLE_OUTPUT_NAME = "output"


def export_from_torch(module, contract: InputContract, path: Path, log_path: Path,
                      output_names: tuple[str, ...] = (SINGLE_OUTPUT_NAME,)) -> None:
    """`output_names`: what check_model_runs named the module's outputs, in the order it returns them."""
    import torch

    example = torch.zeros(contract.input_shape, dtype=torch.float32)
    try:
        with torch.no_grad(), output_to(log_path):
            # dynamo=False: the TorchScript-based exporter handles these CNNs on torch 2.13 without
            # the extra dependencies (onnxscript) the dynamo exporter needs. PRESERVE on a model in eval mode:
            # inference graph, BatchNormalization left for graph/passes/fold_batch_norm.py (the same bytes on
            # any CPU; the exporter's own folding rounds by the machine's float32 kernels).
            torch.onnx.export(
                module.eval(), (example,), str(path), dynamo=False, opset_version=OPSET,
                input_names=["input"], output_names=list(output_names), do_constant_folding=True,
                training=torch.onnx.TrainingMode.PRESERVE,
            )
    except Exception as error:
        raise ConverterError(
            f"torch.onnx.export failed: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
            hint=f"check that the model runs on a {tuple(contract.input_shape)} input; details in {log_path}",
        ) from None


def check_model_runs(module, contract: InputContract) -> tuple[str, ...]:
    """Run the model once on the contract's shape, so a wrong --input-shape is an input error, not a crash;
    return the names its outputs get (see output_names)."""
    import torch

    try:
        with torch.no_grad():
            result = module(torch.zeros(contract.input_shape, dtype=torch.float32))
    except Exception as error:
        raise InputError(
            f"the model does not accept input shape {tuple(contract.input_shape)}: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}",
            hint="pass the --input-shape the model was trained with (N,C,H,W)",
        ) from None
    return output_names(result)


OUTPUTS_HINT = ("return one tensor, a tuple or list of tensors, or a dict of tensors keyed by names like 'boxes' "
                "and 'scores' (no nesting)")


def output_names(result) -> tuple[str, ...]:
    """A tensor is "output"; a tuple or list of tensors "output_0", "output_1", ...; a dict of tensors keeps its
    keys (in its order). Anything else cannot be exported as named tensors."""
    import torch

    if isinstance(result, torch.Tensor):
        return (SINGLE_OUTPUT_NAME,)
    if isinstance(result, dict):
        named = list(result.items())
    elif isinstance(result, (tuple, list)):
        named = [(f"{SINGLE_OUTPUT_NAME}_{index}", value) for index, value in enumerate(result)]
    else:
        raise InputError(f"the model returns a {type(result).__name__}, not tensors", hint=OUTPUTS_HINT)
    if not named:
        raise InputError(f"the model returns an empty {type(result).__name__}", hint=OUTPUTS_HINT)
    not_tensors = [f"{name} ({type(value).__name__})" for name, value in named if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise InputError(f"the model's outputs {', '.join(not_tensors)} are not tensors", hint=OUTPUTS_HINT)
    bad_keys = [repr(name) for name, _ in named if not (isinstance(name, str) and name.isidentifier())]
    if bad_keys:
        raise InputError(f"the model's output keys {', '.join(bad_keys)} cannot name tensors", hint=OUTPUTS_HINT)
    return tuple(name for name, _ in named)


def simplify_and_check(path: Path, log_path: Path) -> None:
    """BatchNormalization folded into convolutions in float64, then onnxsim folds constants and removes export
    noise; the checker rejects malformed graphs."""
    import onnx
    import onnxsim

    model = _load_checked(path)
    fold_batch_norms(model)
    try:
        with output_to(log_path):
            simplified, valid = onnxsim.simplify(model)
    except Exception as error:
        raise ConverterError(f"onnxsim failed: {error}", hint=f"details in {log_path}") from None
    if not valid:
        raise ConverterError("onnxsim produced a graph that does not match the original", hint=f"see {log_path}")
    onnx.save(simplified, str(path))
    _load_checked(path)


def _load_checked(path: Path):
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model, full_check=True)
    except Exception as error:
        raise InputError(
            f"{path.name} is not a valid ONNX model: {type(error).__name__}: {str(error).splitlines()[0][:300]}",
            hint="re-export the model; the file may be truncated or from an incompatible exporter",
        ) from None
    return model


def describe(path: Path, contract: InputContract) -> OnnxModel:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InputError(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)})",
            hint="mobile-export exports image models with one image input; fold the others into the model "
                 "(constants) or export one model per input",
        )

    def dims(value_info) -> tuple[int, ...]:
        return tuple(d.dim_value if d.dim_value > 0 else -1 for d in value_info.type.tensor_type.shape.dim)

    input_shape = dims(inputs[0])
    if len(input_shape) != 4 or any(d not in (-1, c) for d, c in zip(input_shape, contract.input_shape)):
        raise InputError(
            f"the ONNX input {inputs[0].name!r} has shape {input_shape}, not --input-shape {contract.input_shape}",
            hint="pass the --input-shape the ONNX model was exported with",
        )
    outputs = tuple(TensorSpec(output.name, dims(output)) for output in model.graph.output)
    return OnnxModel(path, inputs[0].name, tuple(contract.input_shape), outputs)
