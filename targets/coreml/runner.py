"""Running a Core ML package: the Core ML runtime on macOS, the reference evaluator (mil_reference.py) elsewhere.
The Runner says which ran (`evaluator`), and so does each artifact's manifest entry."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.artifact import OutputsRunner, run_in_chunks
from targets.coreml.preprocessing import INPUT_NAME, OUTPUT_NAME, ImagePreprocessing
from targets.coreml.tools import EVALUATOR_REFERENCE, EVALUATOR_RUNTIME, evaluator_name, import_coremltools


class CoreMLRunner(OutputsRunner):
    """Takes preprocessed NCHW tensors like every runner, turns them back into the pixels the model's
    ImageType input expects, and runs the Core ML runtime (macOS) or the reference evaluator (elsewhere)."""

    def __init__(self, path: Path, preprocessing: ImagePreprocessing, output_name: str = OUTPUT_NAME,
                 evaluator: str | None = None, outputs: dict[str, str] | None = None):
        """`outputs`: {ONNX output name: Core ML output name} (the artifact's details); None: one output,
        `output_name`."""
        self.evaluator = evaluator or evaluator_name()
        self._preprocessing = preprocessing
        self._outputs = outputs or {"output": output_name}
        if self.evaluator == EVALUATOR_RUNTIME:
            from targets.coreml.mil_reference import class_labels

            ct = import_coremltools()
            self._model = ct.models.MLModel(str(path), compute_units=ct.ComputeUnit.CPU_ONLY)
            self._class_labels = class_labels(path)  # the order of the score dictionary's keys
            self._batch = 1  # an image input takes one pixel buffer per prediction
        else:
            from targets.coreml.mil_reference import load_program

            self._program = load_program(path)
            self._batch = self._program.input_shapes[INPUT_NAME][0]

    def run_outputs(self, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
        return run_in_chunks(self._run_fixed_batch, batch_nchw, self._batch)

    def _run_fixed_batch(self, batch_nchw: np.ndarray) -> dict[str, np.ndarray]:
        pixels = self._preprocessing.pixels_from_tensor(batch_nchw)
        if self.evaluator == EVALUATOR_REFERENCE:
            values = self._program.run({INPUT_NAME: pixels})
            return {name: np.asarray(values[coreml], dtype=np.float32) for name, coreml in self._outputs.items()}
        # Not run here: this branch needs macOS (the Core ML runtime); Linux CI tests its selection, and this
        # glue against a stand-in MLModel.
        output = self._model.predict({INPUT_NAME: _pil_image(pixels[0], self._preprocessing.color_layout)})
        return {name: self._scores(output[coreml]) for name, coreml in self._outputs.items()}

    def _scores(self, values) -> np.ndarray:
        if isinstance(values, dict):  # a classifier's score dictionary, back into class-index order
            values = [[values[label] for label in self._class_labels]]
        return np.asarray(values, dtype=np.float32)


def _pil_image(pixels_chw: np.ndarray, color_layout: str):
    """Core ML reads an image input from 8-bit pixels: the tensor's pixels are rounded to uint8 here."""
    from PIL import Image

    planes = np.clip(np.rint(pixels_chw), 0, 255).astype(np.uint8)
    if color_layout == "G":
        return Image.fromarray(planes[0], mode="L")
    rgb = planes[::-1] if color_layout == "BGR" else planes  # Core ML reorders an RGB image for a BGR model
    return Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 2, 0)), mode="RGB")
