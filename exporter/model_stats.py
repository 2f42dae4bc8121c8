"""Size and cost of any torch CNN, measured by running it once: parameters, MACs, final feature map, receptive field.

Nothing here is a lookup table: every figure comes from the module tree and one forward pass at batch 1.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


@dataclass(frozen=True)
class ModelStats:
    params: int
    macs: int  # multiply-accumulates of Conv2d and Linear layers for one image
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...] | None  # of the model's output, when it is one tensor
    final_feature_map: tuple[int, int, int] | None  # (channels, height, width) of the last Conv2d output
    receptive_field: int | None  # pixels of the input one element of that feature map sees (per side)
    output_stride: int | None  # input pixels between neighbouring elements of that feature map

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Field:
    size: int
    jump: int


def count_params(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def model_stats(model: nn.Module, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> ModelStats:
    """Run `model` once on zeros of `input_shape` and measure it.

    MACs, counted as the papers do (BatchNorm, activations, additions and pooling are free):
    a Conv2d costs output elements x (in_channels / groups) x kh x kw, a Linear in_features x out_features
    per output row. Figures are per image (divided by the batch size).

    The final feature map is the output of the last Conv2d to run on the spatial map (convs on globally
    pooled vectors, like squeeze-excitation gates, are skipped): what the global pool or classifier reads.
    Its receptive field follows every tensor through the graph rather than one chain of layers: each Conv2d,
    MaxPool2d and AvgPool2d module grows it by (k - 1) x dilation x jump and multiplies the jump by its
    stride; any other op (add, concat, chunk, shuffle, activation) passes on the largest field among its
    inputs, so parallel branches count once and the widest branch wins. Tensors made by global pooling
    (adaptive pooling, means) carry no field, so squeeze-excitation gates do not make the field global.
    Limits: convolutions or pools called functionally (F.conv2d outside a module) pass the field on unchanged,
    and padding is ignored, so near the image border the true field is clipped by the image.
    """
    if len(input_shape) != 4:
        raise ValueError(f"model_stats needs an N,C,H,W input shape, got {tuple(input_shape)}")
    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    batch = input_shape[0]

    macs = 0
    last_conv_output: torch.Tensor | None = None
    fields = WeakIdKeyDictionary()

    def on_conv_or_linear(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(module, nn.Conv2d):
            kernel_h, kernel_w = module.kernel_size
            macs += output.numel() // batch * (module.in_channels // module.groups) * kernel_h * kernel_w
        else:
            macs += output.numel() // batch * module.in_features

    def on_field_layer(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal last_conv_output
        field = fields.get(inputs[0])
        if field is None:
            fields.pop(output, None)
            return
        kernel, stride, dilation = _geometry(module)
        fields[output] = _Field(field.size + (kernel - 1) * dilation * field.jump, field.jump * stride)
        if isinstance(module, nn.Conv2d):
            last_conv_output = output

    handles = []
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            handles.append(module.register_forward_hook(on_conv_or_linear))
        if isinstance(module, (nn.Conv2d, *_POOLS)):
            handles.append(module.register_forward_hook(on_field_layer))

    was_training = model.training
    threads = torch.get_num_threads()
    image = torch.zeros(input_shape, device=device, dtype=dtype)
    fields[image] = _Field(1, 1)
    try:
        # One pass over small batch-1 tensors: intra-op threads cost more than they save (10x on 2 busy cores).
        torch.set_num_threads(1)
        model.eval()
        with torch.no_grad(), _FieldPropagation(fields):
            output = model(image)
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
        for handle in handles:
            handle.remove()

    final_map = field = None
    if last_conv_output is not None:
        final_map = tuple(int(v) for v in last_conv_output.shape[1:])
        field = fields.get(last_conv_output)
    return ModelStats(
        params=count_params(model),
        macs=int(macs),
        input_shape=tuple(int(v) for v in input_shape),
        output_shape=tuple(int(v) for v in output.shape) if isinstance(output, torch.Tensor) else None,
        final_feature_map=final_map,
        receptive_field=field.size if field else None,
        output_stride=field.jump if field else None,
    )


def _geometry(module: nn.Module) -> tuple[int, int, int]:
    """(kernel, stride, dilation) along the height axis; the zoo's layers are square."""
    def first(value) -> int:
        return int(value[0] if isinstance(value, (tuple, list)) else value)

    kernel = first(module.kernel_size)
    stride = first(module.stride) if module.stride is not None else kernel
    dilation = first(getattr(module, "dilation", 1))
    return kernel, stride, dilation


class _FieldPropagation(TorchFunctionMode):
    """Hands every op's output the largest receptive field among its spatial inputs."""

    _GLOBAL_POOLS = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "mean", "amax", "sum", "flatten"}

    def __init__(self, fields: WeakIdKeyDictionary):
        super().__init__()
        self.fields = fields

    def __torch_function__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", "")
        # Global pooling and flattening end the spatial map; SE gates read from them.
        if name in self._GLOBAL_POOLS or name.startswith("adaptive_"):
            return result
        inputs = [value for value in tree_flatten((args, kwargs))[0] if isinstance(value, torch.Tensor)]
        known = [self.fields[t] for t in inputs if t in self.fields]
        if known:
            widest = max(known, key=lambda field: field.size)
            for output in tree_flatten(result)[0]:
                if isinstance(output, torch.Tensor) and output.dim() >= 3:  # 5-D views inside channel shuffles
                    self.fields[output] = widest
        return result
