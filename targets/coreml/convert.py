"""coremltools converts the traced PyTorch module to ML Program `.mlpackage`s, one per precision.

fp32, fp16 (float16 weights and compute), int8 (int8 weights, per-channel symmetric, dequantized to
float16 at load; compute stays float16); on request (job.coreml_w8a8) w8a8 (the same int8 weights and 8-bit
activations, iOS 17+: w8a8.py), and (job.coreml_palettize) palette6 (6-bit k-means look-up-table weights,
float16 compute). w8a8 is asked for, not built by default: it misses the int8 gate on MobileNetV2 (top-1),
MnasNet and MobileNetV1 0.25 of the zoo, whose weights-only int8 packages pass.

With class labels (the export's labels, one per output of a (1, classes) output), each package is a
Core ML classifier: `classLabel` (the top class) and a score dictionary `classLabel_probs`. The scores are
the model's own outputs, unchanged (coremltools adds no softmax), so they are the numbers parity compares.
Labels that repeat (ImageNet has two "sunglasses") get their class index appended, because dictionary
keys must be unique.

An ONNX source has no PyTorch module: pnnx regenerates one from the graph (graph/onnx_to_torch.py), and that
module is converted; parity still compares with ONNX Runtime on the source file.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from core.artifact import Artifact, ConversionJob, returned_values
from core.capture import output_to
from core.contract import InputContract
from core.errors import ConverterError
from graph.onnx_to_torch import module_to_convert
from targets.coreml.mil_reference import load_program
from targets.coreml.preprocessing import INPUT_NAME, OUTPUT_NAME, ImagePreprocessing, image_preprocessing
from targets.coreml.tools import EVALUATOR_REFERENCE, evaluator_name, import_coremltools
from targets.coreml.w8a8 import MINIMUM_DEPLOYMENT_TARGET as W8A8_DEPLOYMENT_TARGET
from targets.coreml.w8a8 import RANGE_DESCRIPTION, W8A8_PRECISION, activation_quantized

CLASS_LABEL_NAME = "classLabel"


PRECISIONS = ("fp32", "fp16", "int8")


PALETTE_PRECISION = "palette6"  # 6-bit palettized weights (a 64-entry look-up table per tensor), on request


PALETTE_BITS = 6


LICENSE = "not specified: the license of the model's weights applies (set it before you ship)"


# iOS 16 is the first release with compressed (constexpr) weights; ML Programs need iOS 15 at least.
MINIMUM_DEPLOYMENT_TARGET = "iOS16"


# coremltools' default: smaller weight tensors (biases, small depthwise kernels) save little as int8.
QUANTIZE_MIN_ELEMENTS = 2048


def convert(job: ConversionJob, runtime: str) -> list[Artifact]:
    preprocessing = image_preprocessing(job.contract)
    module, source = module_to_convert(job)
    traced = _trace(module, job.contract, preprocessing)
    single = job.onnx.single_output
    class_labels = classifier_labels(job.labels, single.shape) if single else None
    outputs = coreml_output_names(job.onnx.output_names)
    precisions = (*PRECISIONS, *((W8A8_PRECISION,) if job.coreml_w8a8 else ()),
                  *((PALETTE_PRECISION,) if job.coreml_palettize else ()))
    job.log_path.parent.mkdir(parents=True, exist_ok=True)
    ct = import_coremltools()
    try:
        with output_to(job.log_path):
            models = _convert_all(ct, traced, job.contract, preprocessing, class_labels, precisions,
                                  tuple(outputs.values()), job.calibration, job.workdir)
            for precision, model in models.items():
                folder = job.workdir / precision
                folder.mkdir()
                _describe(model, precision, job.contract, source)
                model.save(str(folder / "model.mlpackage"))
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
        raise ConverterError(f"coremltools failed: {type(error).__name__}: {str(error)[:500]}",
                             hint=f"the full converter output is in {job.log_path}") from error
    classifier = _classifier_details(models[PRECISIONS[0]], class_labels, job.labels)
    if classifier:
        outputs = {job.onnx.output_names[0]: classifier["scores_output"]}
    return [_artifact(job.workdir / precision / "model.mlpackage", runtime, precision, preprocessing, source,
                      classifier, outputs, len(job.calibration)) for precision in precisions]


def coreml_output_names(onnx_names: tuple[str, ...]) -> dict[str, str]:
    """{ONNX output: Core ML output}. One output is "output" as ever; several keep their names where Core ML can
    use them as feature names (identifiers), else "output_<k>"."""
    if len(onnx_names) == 1:
        return {onnx_names[0]: OUTPUT_NAME}
    return {name: name if name.isidentifier() else f"{OUTPUT_NAME}_{index}" for index, name in enumerate(onnx_names)}


def _artifact(path: Path, runtime: str, precision: str, preprocessing: ImagePreprocessing, source: str,
              classifier: dict | None, outputs: dict[str, str], calibration_samples: int) -> Artifact:
    # Reading the program back lists its ops and fails early, here, on one the evaluator lacks.
    program_ops = load_program(path).op_counts if evaluator_name() == EVALUATOR_REFERENCE else None
    w8a8 = precision == W8A8_PRECISION
    return Artifact(
        path=path, runtime=runtime, precision=precision,
        details={
            "format": "mlprogram (.mlpackage)",
            "minimum_deployment_target": W8A8_DEPLOYMENT_TARGET if w8a8 else MINIMUM_DEPLOYMENT_TARGET,
            "source": source,
            "compute_precision": "float32" if precision == "fp32" else "float16",
            "weights": WEIGHT_DESCRIPTIONS[precision],
            **({"activations": {"int8": RANGE_DESCRIPTION,
                                "calibration_samples": calibration_samples}}
               if w8a8 else {}),
            "input": {"name": INPUT_NAME, "type": "ImageType", **asdict(preprocessing)},
            "output_name": next(iter(outputs.values())),  # the first; "outputs" maps every ONNX output to its own
            "outputs": outputs,
            "classifier": classifier,
            "evaluator": evaluator_name(),
            **({"ops": program_ops} if program_ops else {}),
        },
    )


def classifier_labels(labels, output_shape: tuple[int, ...]) -> tuple[str, ...] | None:
    """The class labels to embed, or None when the output is not one score per label for one image.

    A Core ML classifier reports scores in a dictionary keyed by label, so repeated labels get their class
    index appended ("sunglasses #836", "sunglasses #837"); the labels file keeps the names as given.
    """
    if not labels or len(output_shape) != 2 or output_shape[0] != 1 or output_shape[1] != len(labels):
        return None
    counts = Counter(labels)
    return tuple(f"{label} #{index}" if counts[label] > 1 else label for index, label in enumerate(labels))


WEIGHT_DESCRIPTIONS = {
    "fp32": "float32",
    "fp16": "float16",
    "int8": f"int8 per-channel symmetric (linear_quantize_weights) for tensors of {QUANTIZE_MIN_ELEMENTS}+ elements, "
            "float16 below; float16 compute",
    W8A8_PRECISION: "as int8; activations 8-bit (quantize/dequantize pairs, iOS 17+), float16 compute between them",
    PALETTE_PRECISION: f"{PALETTE_BITS}-bit palettized (palettize_weights, k-means look-up table per tensor) for "
                       f"tensors of {QUANTIZE_MIN_ELEMENTS}+ elements, float16 below; float16 compute",
}


def _classifier_details(model, class_labels, labels) -> dict | None:
    if not class_labels:
        return None
    description = model.get_spec().description
    return {
        "class_label_output": description.predictedFeatureName,
        "scores_output": description.predictedProbabilitiesName,
        "classes": len(class_labels),
        "scores": "the model's raw outputs, unchanged (no softmax added), keyed by label",
        "repeated_labels_with_index_appended": sum(a != b for a, b in zip(class_labels, labels)),
    }


def _with_channel_multipliers(module, multipliers: tuple[float, ...]):
    """The user's module behind a fixed per-channel multiply (the 1/std an ImageType cannot express)."""
    import torch

    class ChannelMultiplied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module
            self.register_buffer("multipliers", torch.tensor(multipliers, dtype=torch.float32).view(1, -1, 1, 1))

        def forward(self, x):
            return self.model(x * self.multipliers)

    return ChannelMultiplied().eval()


def _as_tuple_outputs(module):
    """The module with a dict or list of outputs returned as a tuple in the same order (the tracer takes tuples)."""
    import torch

    class TupleOutputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = module

        def forward(self, x):
            return returned_values(self.model(x))

    return TupleOutputs().eval()


def _trace(module, contract: InputContract, preprocessing: ImagePreprocessing):
    import torch

    example = torch.zeros(contract.input_shape, dtype=torch.float32)
    with torch.no_grad():
        if not isinstance(module(example), torch.Tensor):
            module = _as_tuple_outputs(module)
    if preprocessing.channel_multipliers is not None:
        module = _with_channel_multipliers(module, preprocessing.channel_multipliers)
    try:
        with torch.no_grad():
            return torch.jit.trace(module, example, check_trace=False)
    except Exception as error:  # tracing runs the user's forward(): any failure is the model's
        raise ConverterError(f"torch.jit.trace failed for Core ML: {type(error).__name__}: {error}",
                             hint="Core ML conversion traces the model; make forward() traceable") from None


def _convert_all(ct, traced, contract: InputContract, preprocessing: ImagePreprocessing, class_labels,
                 precisions: tuple[str, ...], output_names: tuple[str, ...], calibration, scratch: Path) -> dict:
    from coremltools.optimize import coreml as optimize

    layout = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "G": ct.colorlayout.GRAYSCALE}
    bias = preprocessing.bias[0] if preprocessing.color_layout == "G" else list(preprocessing.bias)
    image = ct.ImageType(name=INPUT_NAME, shape=contract.input_shape, scale=preprocessing.scale, bias=bias,
                         color_layout=layout[preprocessing.color_layout])
    classifier = ct.ClassifierConfig(list(class_labels), predicted_feature_name=CLASS_LABEL_NAME) if class_labels else None
    common = dict(inputs=[image], outputs=[ct.TensorType(name=name) for name in output_names], convert_to="mlprogram",
                  classifier_config=classifier, minimum_deployment_target=getattr(ct.target, MINIMUM_DEPLOYMENT_TARGET))
    fp32 = ct.convert(traced, compute_precision=ct.precision.FLOAT32, **common)
    fp16 = ct.convert(traced, compute_precision=ct.precision.FLOAT16, **common)
    weight_config = optimize.OptimizationConfig(global_config=optimize.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=QUANTIZE_MIN_ELEMENTS))
    int8 = optimize.linear_quantize_weights(fp16, weight_config)
    models = {"fp32": fp32, "fp16": fp16, "int8": int8}
    if W8A8_PRECISION in precisions:
        fp16_ios17 = ct.convert(traced, compute_precision=ct.precision.FLOAT16,
                                **{**common, "minimum_deployment_target": getattr(ct.target, W8A8_DEPLOYMENT_TARGET)})
        models[W8A8_PRECISION] = activation_quantized(ct, fp16_ios17, preprocessing.pixels_from_tensor(calibration),
                                                      scratch, weight_config)
    if PALETTE_PRECISION in precisions:
        models[PALETTE_PRECISION] = optimize.palettize_weights(fp16, optimize.OptimizationConfig(
            global_config=optimize.OpPalettizerConfig(mode="kmeans", nbits=PALETTE_BITS,
                                                      weight_threshold=QUANTIZE_MIN_ELEMENTS)))
    return models


def _describe(model, precision: str, contract: InputContract, source: str) -> None:
    model.author = "mobile-export"
    model.version = metadata.version("mobile-export")
    model.license = LICENSE
    model.short_description = (
        f"Image model exported by mobile-export ({precision}). Input: a {contract.width}x{contract.height} "
        f"{'grayscale' if contract.channels == 1 else contract.color.upper()} image; the model applies "
        f"(pixel / {contract.pixel_scale:g} - mean) / std itself."
    )
    model.user_defined_metadata.update({
        "mobile_export.precision": precision,
        "mobile_export.source": source,
        "mobile_export.mean": ",".join(f"{v:g}" for v in contract.mean),
        "mobile_export.std": ",".join(f"{v:g}" for v in contract.std),
        "mobile_export.pixel_scale": f"{contract.pixel_scale:g}",
        "mobile_export.color": contract.color,
    })
