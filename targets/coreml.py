"""Core ML target (iOS): coremltools converts the traced PyTorch module to ML Program `.mlpackage`s.

Three artifacts: fp32, fp16 (float16 weights and compute), and int8 (int8 weights, per-channel symmetric,
dequantized to float16 at load; compute stays float16); on request (job.coreml_palettize) a fourth,
palette6 (6-bit k-means look-up-table weights, float16 compute).

The input is an image, not a tensor: the app hands Core ML a pixel buffer and the model itself applies
the input contract, `tensor = (pixel / pixel_scale - mean) / std`. Core ML's ImageType has one scalar
`scale` and a per-channel `bias`, so a per-channel std (ImageNet's 0.229, 0.224, 0.225) cannot live in it;
then the ImageType does `pixel / pixel_scale - mean` and a fixed per-channel multiply by 1/std is traced
into the model in front of the user's module.

With class labels (the export's labels, one per output of a (1, classes) output), each package is a
Core ML classifier: `classLabel` (the top class) and a score dictionary `classLabel_probs`. The scores are
the model's own outputs, unchanged (coremltools adds no softmax), so they are the numbers parity compares.
Labels that repeat (ImageNet has two "sunglasses") get their class index appended, because dictionary
keys must be unique.

An ONNX source has no PyTorch module: pnnx regenerates one from the graph (targets/onnx_to_torch.py), and
that module is converted; parity still compares with ONNX Runtime on the source file.

Parity: on macOS the real Core ML runtime runs each artifact; elsewhere the reference evaluator
(targets/_mil_reference.py) executes the saved program op by op. The Runner says which ran
(`evaluator`), and so does each artifact's manifest entry.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from core.capture import output_to
from core.contract import InputContract
from core.errors import ConverterError
from core.artifact import Artifact, ConversionJob, run_in_chunks

INPUT_NAME = "image"
OUTPUT_NAME = "output"
CLASS_LABEL_NAME = "classLabel"
PRECISIONS = ("fp32", "fp16", "int8")
PALETTE_PRECISION = "palette6"  # 6-bit palettized weights (a 64-entry look-up table per tensor), on request
PALETTE_BITS = 6
LICENSE = "not specified: the license of the model's weights applies (set it before you ship)"
# iOS 16 is the first release with compressed (constexpr) weights; ML Programs need iOS 15 at least.
MINIMUM_DEPLOYMENT_TARGET = "iOS16"
EVALUATOR_RUNTIME, EVALUATOR_REFERENCE = "coreml-runtime", "reference"
# coremltools' default: smaller weight tensors (biases, small depthwise kernels) save little as int8.
QUANTIZE_MIN_ELEMENTS = 2048


@dataclass(frozen=True)
class ImagePreprocessing:
    """What the model does to the pixels: tensor = channel_multipliers * (scale * pixel + bias)."""

    scale: float  # Core ML ImageType scale (one number)
    bias: tuple[float, ...]  # Core ML ImageType bias, one per channel, in the contract's channel order
    channel_multipliers: tuple[float, ...] | None  # 1/std folded into the model when std varies by channel
    color_layout: str  # "RGB", "BGR" or "G" (grayscale)

    def pixels_from_tensor(self, batch_nchw: np.ndarray) -> np.ndarray:
        """Undo the contract: preprocessed N x C x H x W tensors -> the pixel values (0..pixel_scale) behind them."""
        tensor = np.asarray(batch_nchw, dtype=np.float64)
        if self.channel_multipliers is not None:
            tensor = tensor / np.asarray(self.channel_multipliers).reshape(1, -1, 1, 1)
        pixels = (tensor - np.asarray(self.bias).reshape(1, -1, 1, 1)) / self.scale
        return pixels.astype(np.float32)


def image_preprocessing(contract: InputContract) -> ImagePreprocessing:
    mean, std, pixel_scale = np.asarray(contract.mean), np.asarray(contract.std), contract.pixel_scale
    layout = "G" if contract.channels == 1 else contract.color.upper()
    if np.all(std == std[0]):
        return ImagePreprocessing(float(1.0 / (pixel_scale * std[0])), tuple(float(v) for v in -mean / std), None, layout)
    return ImagePreprocessing(float(1.0 / pixel_scale), tuple(float(v) for v in -mean),
                              tuple(float(v) for v in 1.0 / std), layout)


def import_coremltools():
    """coremltools imports TensorFlow when it is installed and prints to the terminal while doing so."""
    if "coremltools" in sys.modules:
        return sys.modules["coremltools"]
    try:
        with output_to(os.devnull):
            import coremltools
    except ImportError as error:
        raise ConverterError(f"coremltools is not installed ({error})",
                             hint="run `make venv` to install the pinned tools") from None
    return coremltools


def evaluator_name(platform: str | None = None) -> str:
    """The real Core ML runtime exists on macOS only; everywhere else the reference evaluator runs."""
    return EVALUATOR_RUNTIME if (platform or sys.platform) == "darwin" else EVALUATOR_REFERENCE


def classifier_labels(labels, output_shape: tuple[int, ...]) -> tuple[str, ...] | None:
    """The class labels to embed, or None when the output is not one score per label for one image.

    A Core ML classifier reports scores in a dictionary keyed by label, so repeated labels get their class
    index appended ("sunglasses #836", "sunglasses #837"); the labels file keeps the names as given.
    """
    if not labels or len(output_shape) != 2 or output_shape[0] != 1 or output_shape[1] != len(labels):
        return None
    counts = Counter(labels)
    return tuple(f"{label} #{index}" if counts[label] > 1 else label for index, label in enumerate(labels))


class CoreMLTarget:
    name = "coreml"
    runtime = "coreml"

    def convert(self, job: ConversionJob) -> list[Artifact]:
        preprocessing = image_preprocessing(job.contract)
        module, source = _torch_module(job)
        traced = _trace(module, job.contract, preprocessing)
        class_labels = classifier_labels(job.labels, job.onnx.output_shape)
        precisions = (*PRECISIONS, PALETTE_PRECISION) if job.coreml_palettize else PRECISIONS
        job.log_path.parent.mkdir(parents=True, exist_ok=True)
        ct = import_coremltools()
        try:
            with output_to(job.log_path):
                models = _convert_all(ct, traced, job.contract, preprocessing, class_labels, precisions)
                for precision, model in models.items():
                    folder = job.workdir / precision
                    folder.mkdir()
                    _describe(model, precision, job.contract, source)
                    model.save(str(folder / "model.mlpackage"))
        except (RuntimeError, ValueError, TypeError, NotImplementedError) as error:
            raise ConverterError(f"coremltools failed: {type(error).__name__}: {str(error)[:500]}",
                                 hint=f"the full converter output is in {job.log_path}") from error
        classifier = _classifier_details(models[PRECISIONS[0]], class_labels, job.labels)
        return [self._artifact(job.workdir / precision / "model.mlpackage", precision, preprocessing, source,
                               classifier) for precision in precisions]

    def _artifact(self, path: Path, precision: str, preprocessing: ImagePreprocessing, source: str,
                  classifier: dict | None) -> Artifact:
        from targets._mil_reference import load_program

        # Reading the program back lists its ops and fails early, here, on one the evaluator lacks.
        program_ops = load_program(path).op_counts if evaluator_name() == EVALUATOR_REFERENCE else None
        return Artifact(
            path=path, runtime=self.runtime, precision=precision,
            details={
                "format": "mlprogram (.mlpackage)",
                "minimum_deployment_target": MINIMUM_DEPLOYMENT_TARGET,
                "source": source,
                "compute_precision": "float32" if precision == "fp32" else "float16",
                "weights": WEIGHT_DESCRIPTIONS[precision],
                "input": {"name": INPUT_NAME, "type": "ImageType", **asdict(preprocessing)},
                "output_name": classifier["scores_output"] if classifier else OUTPUT_NAME,
                "classifier": classifier,
                "evaluator": evaluator_name(),
                **({"ops": program_ops} if program_ops else {}),
            },
        )

    def load(self, artifact: Artifact) -> "CoreMLRunner":
        return CoreMLRunner(artifact.path, preprocessing_of(artifact), artifact.details.get("output_name", OUTPUT_NAME))

    def tool_versions(self) -> dict[str, str]:
        return {"coremltools": metadata.version("coremltools")}


WEIGHT_DESCRIPTIONS = {
    "fp32": "float32",
    "fp16": "float16",
    "int8": f"int8 per-channel symmetric (linear_quantize_weights) for tensors of {QUANTIZE_MIN_ELEMENTS}+ elements, "
            "float16 below; float16 compute",
    PALETTE_PRECISION: f"{PALETTE_BITS}-bit palettized (palettize_weights, k-means look-up table per tensor) for "
                       f"tensors of {QUANTIZE_MIN_ELEMENTS}+ elements, float16 below; float16 compute",
}


def preprocessing_of(artifact: Artifact) -> ImagePreprocessing:
    """The image preprocessing an artifact's manifest details record (lists there, tuples here)."""
    return ImagePreprocessing(**{
        key: (tuple(value) if isinstance(value, list) else value)
        for key, value in artifact.details["input"].items() if key not in ("name", "type")
    })


def _torch_module(job: ConversionJob):
    """The module to convert and where it came from: the user's, or one pnnx regenerated from the ONNX graph."""
    if job.torch_module is not None:
        return job.torch_module, "PyTorch module"
    from targets.onnx_to_torch import torch_module_from_onnx

    module = torch_module_from_onnx(job.onnx, job.workdir / "pnnx", job.log_path, job.timeout_s)
    return module, "PyTorch module regenerated from the ONNX graph by pnnx"


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


def _trace(module, contract: InputContract, preprocessing: ImagePreprocessing):
    import torch

    if preprocessing.channel_multipliers is not None:
        module = _with_channel_multipliers(module, preprocessing.channel_multipliers)
    example = torch.zeros(contract.input_shape, dtype=torch.float32)
    try:
        with torch.no_grad():
            return torch.jit.trace(module, example, check_trace=False)
    except Exception as error:  # tracing runs the user's forward(): any failure is the model's
        raise ConverterError(f"torch.jit.trace failed for Core ML: {type(error).__name__}: {error}",
                             hint="Core ML conversion traces the model; make forward() traceable") from None


def _convert_all(ct, traced, contract: InputContract, preprocessing: ImagePreprocessing, class_labels,
                 precisions: tuple[str, ...]) -> dict:
    from coremltools.optimize import coreml as optimize

    layout = {"RGB": ct.colorlayout.RGB, "BGR": ct.colorlayout.BGR, "G": ct.colorlayout.GRAYSCALE}
    bias = preprocessing.bias[0] if preprocessing.color_layout == "G" else list(preprocessing.bias)
    image = ct.ImageType(name=INPUT_NAME, shape=contract.input_shape, scale=preprocessing.scale, bias=bias,
                         color_layout=layout[preprocessing.color_layout])
    classifier = ct.ClassifierConfig(list(class_labels), predicted_feature_name=CLASS_LABEL_NAME) if class_labels else None
    common = dict(inputs=[image], outputs=[ct.TensorType(name=OUTPUT_NAME)], convert_to="mlprogram",
                  classifier_config=classifier, minimum_deployment_target=getattr(ct.target, MINIMUM_DEPLOYMENT_TARGET))
    fp32 = ct.convert(traced, compute_precision=ct.precision.FLOAT32, **common)
    fp16 = ct.convert(traced, compute_precision=ct.precision.FLOAT16, **common)
    int8 = optimize.linear_quantize_weights(fp16, optimize.OptimizationConfig(global_config=optimize.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel", weight_threshold=QUANTIZE_MIN_ELEMENTS)))
    models = {"fp32": fp32, "fp16": fp16, "int8": int8}
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


class CoreMLRunner:
    """Takes preprocessed NCHW tensors like every runner, turns them back into the pixels the model's
    ImageType input expects, and runs the Core ML runtime (macOS) or the reference evaluator (elsewhere)."""

    def __init__(self, path: Path, preprocessing: ImagePreprocessing, output_name: str = OUTPUT_NAME,
                 evaluator: str | None = None):
        self.evaluator = evaluator or evaluator_name()
        self._preprocessing = preprocessing
        self._output_name = output_name
        if self.evaluator == EVALUATOR_RUNTIME:
            from targets._mil_reference import class_labels

            ct = import_coremltools()
            self._model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
            self._class_labels = class_labels(path)  # the order of the score dictionary's keys
            self._batch = 1  # an image input takes one pixel buffer per prediction
        else:
            from targets._mil_reference import load_program

            self._program = load_program(path)
            self._batch = self._program.input_shapes[INPUT_NAME][0]

    def run(self, batch_nchw: np.ndarray) -> np.ndarray:
        return run_in_chunks(self._run_fixed_batch, batch_nchw, self._batch)

    def _run_fixed_batch(self, batch_nchw: np.ndarray) -> np.ndarray:
        pixels = self._preprocessing.pixels_from_tensor(batch_nchw)
        if self.evaluator == EVALUATOR_REFERENCE:
            return self._program.run({INPUT_NAME: pixels})[self._output_name]
        # Not run here: this branch needs macOS (the Core ML runtime); Linux CI tests only its selection.
        output = self._model.predict({INPUT_NAME: _pil_image(pixels[0], self._preprocessing.color_layout)})
        scores = output[self._output_name]
        if isinstance(scores, dict):  # a classifier's score dictionary, back into class-index order
            scores = np.asarray([[scores[label] for label in self._class_labels]], dtype=np.float32)
        return np.asarray(scores, dtype=np.float32)


def _pil_image(pixels_chw: np.ndarray, color_layout: str):
    """Core ML reads an image input from 8-bit pixels: the tensor's pixels are rounded to uint8 here."""
    from PIL import Image

    planes = np.clip(np.rint(pixels_chw), 0, 255).astype(np.uint8)
    if color_layout == "G":
        return Image.fromarray(planes[0], mode="L")
    rgb = planes[::-1] if color_layout == "BGR" else planes  # Core ML reorders an RGB image for a BGR model
    return Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)), mode="RGB")
