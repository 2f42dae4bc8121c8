"""Core ML (iOS): export through the CLI, and proof that the reference evaluator really runs the program."""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from core.contract import InputContract
from core.errors import ConverterError
from exporter.config import build_spec
from tests.helpers import DIGIT_NAMES, NO_FLAGS

EXPECTED_EVALUATOR = "coreml-runtime" if sys.platform == "darwin" else "reference"


def _digits_module(user_package: Path):
    sys.path.insert(0, str(user_package))
    try:
        from my_pkg import my_mod

        return my_mod.build().eval()
    finally:
        sys.path.remove(str(user_package))
        sys.modules.pop("my_pkg.my_mod", None)
        sys.modules.pop("my_pkg", None)


def _digit_tensors(count: int = 40) -> np.ndarray:
    from tests.helpers import digit_photos, preprocess

    photos, _ = digit_photos(1797)
    return preprocess(photos[-count:])  # the fixture trained on the first 1500


def test_ios_export_builds_mlpackages_whose_parity_the_evaluator_computed(ios_export):
    result, model_dir = ios_export
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((model_dir / "manifest.json").read_text())
    coreml = {a["precision"]: a for a in manifest["artifacts"] if a["runtime"] == "coreml"}
    assert set(coreml) == {"fp32", "fp16", "int8", "w8a8", "palette6"}
    for precision, minimum in (("fp32", 0.99999), ("fp16", 0.999), ("int8", 0.99), ("w8a8", 0.99), ("palette6", 0.99)):
        artifact = coreml[precision]
        assert artifact["path"] == f"my_mod_{precision}.mlpackage"
        assert (model_dir / artifact["path"] / "Manifest.json").is_file()
        assert artifact["target"] == "ios"
        assert artifact["details"]["evaluator"] == EXPECTED_EVALUATOR
        assert artifact["parity"]["passed"] and artifact["parity"]["cosine"] >= minimum
        assert artifact["parity"]["samples"] >= 15
    assert coreml["int8"]["details"]["ops"]["constexpr_affine_dequantize"] >= 1  # int8 weights really are there
    assert coreml["palette6"]["details"]["ops"]["constexpr_lut_to_dense"] >= 1  # and 6-bit look-up tables
    w8a8 = coreml["w8a8"]["details"]  # 8-bit activations around every convolution, for iOS 17
    assert w8a8["ops"]["quantize"] >= w8a8["ops"]["conv"] and w8a8["minimum_deployment_target"] == "iOS17"
    assert w8a8["activations"]["calibration_samples"] == manifest["data"]["calibration_samples"]
    # With labels each package is a classifier; parity compared its score dictionary, which the evaluator ran.
    assert coreml["fp32"]["details"]["ops"]["classify"] == 1
    assert coreml["fp32"]["details"]["classifier"]["scores_output"] == coreml["fp32"]["details"]["output_name"]
    assert manifest["tools"]["coremltools"] != "not installed"
    assert f"run by the {EXPECTED_EVALUATOR} evaluator" in result.stderr


def test_mlpackage_checksum_covers_every_file_and_metadata_is_set(ios_export):
    from targets.coreml.tools import import_coremltools

    _, model_dir = ios_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    artifact = next(a for a in manifest["artifacts"] if a["runtime"] == "coreml" and a["precision"] == "fp16")
    package = model_dir / artifact["path"]
    files = sorted(p for p in package.rglob("*") if p.is_file())
    listing = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(package).as_posix()}\n" for p in files)
    assert artifact["sha256"] == hashlib.sha256(listing.encode()).hexdigest()
    assert artifact["bytes"] == sum(p.stat().st_size for p in files)
    spec = import_coremltools().models.MLModel(str(package), skip_model_load=True).get_spec()
    assert spec.description.metadata.author == "mobile-export"
    assert spec.description.metadata.versionString and spec.description.metadata.shortDescription
    assert spec.description.metadata.license
    assert spec.description.input[0].type.WhichOneof("Type") == "imageType"
    assert spec.description.predictedFeatureName == "classLabel"
    assert [o.type.WhichOneof("Type") for o in spec.description.output] == ["stringType", "dictionaryType"]


def test_the_classifier_labels_each_score_with_its_class_name(ios_export):
    from targets.coreml.mil_reference import class_labels, load_program

    _, model_dir = ios_export
    package = model_dir / "my_mod_fp32.mlpackage"
    assert class_labels(package) == DIGIT_NAMES
    samples = _digit_tensors(5)
    from targets.coreml.preprocessing import image_preprocessing

    contract = InputContract((1, 3, 32, 32), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    pixels = image_preprocessing(contract).pixels_from_tensor(samples[:1])
    outputs = load_program(package).run({"image": pixels})
    assert outputs["classLabel"] == DIGIT_NAMES[int(outputs["classLabel_probs"].argmax())]


@pytest.mark.parametrize("precision", ["int8", "w8a8", "palette6"])
def test_weights_are_read_without_running_the_program_and_match_a_full_run(ios_export, precision):
    from targets.coreml.mil_reference import is_constant, load_program

    _, model_dir = ios_export
    program = load_program(model_dir / f"my_mod_{precision}.mlpackage")
    weights = program.weights()
    (shape,) = program.input_shapes.values()
    everything = program.all_values({program.input_names[0]: np.zeros(shape, np.float32)})
    constants = {out.name for op in program.operations if is_constant(op) for out in op.outputs}
    assert set(weights) == {name for name in constants if name in everything}
    assert any(op.type.startswith("constexpr_") for op in program.operations)  # dequantized weights included
    for name, value in weights.items():
        np.testing.assert_array_equal(value, everything[name])


def scale_first_channel_of_conv(package: Path, position: int, factor: float) -> None:
    """Multiply the first output channel of the position-th float32 convolution's weights, in weights/weight.bin."""
    from targets.coreml.mil_reference import BLOB_METADATA, load_program

    program = load_program(package)
    conv = [op for op in program.operations if op.type == "conv"][position]
    weight_name = conv.inputs["weight"].arguments[0].name
    const = next(op for op in program.operations if op.type == "const" and op.outputs[0].name == weight_name)
    blob = const.attributes["val"].blobFileValue
    weight_file = program.weights_dir / "weight.bin"
    data = bytearray(weight_file.read_bytes())
    meta = np.frombuffer(bytes(data[blob.offset : blob.offset + BLOB_METADATA.itemsize]), BLOB_METADATA)[0]
    out_channels = const.outputs[0].type.tensorType.dimensions[0].constant.size
    channel_bytes = int(meta["size"]) // out_channels
    start = int(meta["offset"])
    channel = np.frombuffer(bytes(data[start : start + channel_bytes]), dtype=np.float32) * factor
    data[start : start + channel_bytes] = channel.astype(np.float32).tobytes()
    weight_file.write_bytes(bytes(data))


def test_a_corrupted_weight_in_the_saved_package_fails_parity(ios_export, user_package, tmp_path):
    """The evaluator reads the weights from the .mlpackage on disk, so damage there must show in parity."""
    import shutil

    import torch

    from core.artifact import Artifact
    from core.parity import DEFAULT_THRESHOLDS, compare
    from targets.coreml import CoreMLTarget

    _, model_dir = ios_export
    manifest = json.loads((model_dir / "manifest.json").read_text())
    record = next(a for a in manifest["artifacts"] if a["runtime"] == "coreml" and a["precision"] == "fp32")
    package = tmp_path / "damaged.mlpackage"
    shutil.copytree(model_dir / record["path"], package)
    artifact = Artifact(package, "coreml", "fp32", details=record["details"])
    samples = _digit_tensors()
    with torch.no_grad():
        reference = _digits_module(user_package)(torch.from_numpy(samples)).numpy()
    intact = compare(reference, CoreMLTarget().load(artifact).run(samples), DEFAULT_THRESHOLDS["fp32"])
    assert intact.passed, intact.failures

    scale_first_channel_of_conv(package, 0, factor=3.0)

    damaged = compare(reference, CoreMLTarget().load(artifact).run(samples), DEFAULT_THRESHOLDS["fp32"])
    assert not damaged.passed
    assert damaged.cosine < 0.99999 and damaged.max_abs > 100 * intact.max_abs


def test_an_op_the_evaluator_does_not_know_is_not_verified(tmp_path):
    import torch

    from core.artifact import ConversionJob, OnnxModel, TensorSpec
    from targets.coreml import CoreMLTarget

    class SineNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sin(self.conv(x)).mean((2, 3))

    contract = InputContract((1, 3, 16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    job = ConversionJob(
        onnx=OnnxModel(tmp_path / "unused.onnx", "input", (1, 3, 16, 16), (TensorSpec("output", (1, 4)),)),
        contract=contract,
        calibration=np.zeros((1, 3, 16, 16), np.float32), workdir=tmp_path, log_path=tmp_path / "coreml.log",
        torch_module=SineNet().eval(),
    )
    if EXPECTED_EVALUATOR == "coreml-runtime":
        pytest.skip("on macOS the Core ML runtime runs every op; the reference evaluator is not used")
    with pytest.raises(ConverterError) as caught:
        CoreMLTarget().convert(job)
    assert "not verified: op sin" in caught.value.message
    assert "parity was not proven" in caught.value.hint


def test_an_onnx_source_converts_through_a_regenerated_pytorch_module(tmp_path):
    """coremltools reads no ONNX: pnnx rewrites the graph as a PyTorch module, which is converted."""
    import torch

    from core.artifact import ConversionJob, OnnxModel, TensorSpec
    from targets.coreml import CoreMLTarget

    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.Hardswish(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(8, 8, 3, groups=4), torch.nn.ReLU6(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 4),
    ).eval()
    with torch.no_grad():
        module[1].running_mean.uniform_(-1, 1)
        module[1].running_var.uniform_(0.5, 2)
    source = tmp_path / "small.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, 16, 16),), str(source), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["output"])
    contract = InputContract((1, 3, 16, 16), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    job = ConversionJob(
        onnx=OnnxModel(source, "input", (1, 3, 16, 16), (TensorSpec("output", (1, 4)),)), contract=contract,
        calibration=np.zeros((1, 3, 16, 16), np.float32), workdir=tmp_path / "work", log_path=tmp_path / "coreml.log",
        torch_module=None,
    )
    job.workdir.mkdir()
    artifacts = {a.precision: a for a in CoreMLTarget().convert(job)}
    assert set(artifacts) == {"fp32", "fp16", "int8"}
    assert "pnnx" in artifacts["fp32"].details["source"]
    assert "pnnx" in (tmp_path / "coreml.log").read_text()

    import onnxruntime

    from core.parity import DEFAULT_THRESHOLDS, compare

    samples = np.random.default_rng(1).uniform(-2, 2, (6, 3, 16, 16)).astype(np.float32)
    session = onnxruntime.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    reference = np.concatenate([session.run(None, {"input": sample[None]})[0] for sample in samples])
    runner = CoreMLTarget().load(artifacts["fp32"])
    parity = compare(reference, runner.run(samples), DEFAULT_THRESHOLDS["fp32"])
    assert parity.passed, parity.failures
    assert runner.evaluator == EXPECTED_EVALUATOR


def test_repeated_labels_get_their_class_index_and_other_outputs_get_no_classifier():
    from targets.coreml.convert import classifier_labels

    assert classifier_labels(("cat", "sunglasses", "dog", "sunglasses"), (1, 4)) == (
        "cat", "sunglasses #1", "dog", "sunglasses #3")
    assert classifier_labels(("cat", "dog"), (1, 3)) is None  # labels do not match the outputs
    assert classifier_labels(("cat", "dog"), (2, 2)) is None  # Core ML classifies one image per prediction
    assert classifier_labels(None, (1, 2)) is None


def test_the_real_runtime_is_chosen_on_macos_only():
    from targets.coreml.tools import evaluator_name

    assert evaluator_name("darwin") == "coreml-runtime"
    assert evaluator_name("linux") == "reference" and evaluator_name("win32") == "reference"


def test_the_macos_branch_glue_feeds_a_stand_in_mlmodel_pixels_and_orders_its_scores(ios_export, monkeypatch):
    """Our glue around Core ML, not Core ML: prediction needs macOS, so a stand-in for MLModel records what
    the runner feeds it and answers as Core ML's classifiers do, a label -> score dictionary; the runner must
    restore class-index order. Whether Core ML itself computes what the reference evaluator does is not tested."""
    from PIL import Image

    from core.artifact import Artifact
    from targets.coreml.preprocessing import preprocessing_of
    from targets.coreml.runner import CoreMLRunner
    from targets.coreml.tools import import_coremltools

    _, model_dir = ios_export
    fed = []

    real_mlmodel = import_coremltools().models.MLModel

    class FakeMLModel:
        def __init__(self, path, compute_units=None, skip_model_load=False):
            self.saved = real_mlmodel(path, skip_model_load=True)  # reading the spec works on any OS

        def get_spec(self):
            return self.saved.get_spec()

        def predict(self, inputs):
            fed.append(inputs["image"])
            return {"classLabel": "nine", "classLabel_probs": {name: float(i) for i, name in
                                                                reversed(list(enumerate(DIGIT_NAMES)))}}

    monkeypatch.setattr(import_coremltools().models, "MLModel", FakeMLModel)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    record = next(a for a in manifest["artifacts"] if a["runtime"] == "coreml" and a["precision"] == "fp16")
    artifact = Artifact(model_dir / record["path"], "coreml", "fp16", details=record["details"])
    preprocessing = preprocessing_of(artifact)
    runner = CoreMLRunner(artifact.path, preprocessing, record["details"]["output_name"],
                                 evaluator="coreml-runtime")
    samples = _digit_tensors(2)
    scores = runner.run(samples)
    np.testing.assert_array_equal(scores, np.tile(np.arange(10, dtype=np.float32), (2, 1)))
    assert len(fed) == 2
    pixels = np.rint(preprocessing.pixels_from_tensor(samples)).transpose(0, 2, 3, 1)
    for image, expected in zip(fed, pixels):
        assert isinstance(image, Image.Image) and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), np.clip(expected, 0, 255).astype(np.uint8))


@pytest.mark.parametrize("std, color", [((0.25, 0.25, 0.25), "rgb"), ((0.229, 0.224, 0.225), "bgr")])
def test_image_input_preprocessing_reproduces_the_contract(std, color):
    from targets.coreml.preprocessing import image_preprocessing

    contract = InputContract((1, 3, 4, 5), (0.485, 0.456, 0.406), std, color)
    preprocessing = image_preprocessing(contract)
    photo = np.random.default_rng(0).integers(0, 256, (4, 5, 3)).astype(np.uint8)
    tensor = contract.preprocess(photo)[None]
    pixels = preprocessing.pixels_from_tensor(tensor)
    # What Core ML does with the pixel buffer, then the multiply traced into the model.
    rebuilt = preprocessing.scale * pixels + np.asarray(preprocessing.bias).reshape(1, 3, 1, 1)
    if preprocessing.channel_multipliers is not None:
        rebuilt = rebuilt * np.asarray(preprocessing.channel_multipliers).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(rebuilt, tensor, atol=1e-5)
    channels_in_order = photo[:, :, ::-1] if color == "bgr" else photo
    np.testing.assert_allclose(pixels[0], channels_in_order.transpose(2, 0, 1), atol=1e-3)
    assert preprocessing.color_layout == color.upper()
    assert (preprocessing.channel_multipliers is None) == (len(set(std)) == 1)


def test_ios_and_all_targets_ship_to_their_platforms():
    ios = build_spec({**NO_FLAGS, "target": "ios"})
    every = build_spec({**NO_FLAGS, "target": "all"})
    assert ios.target_names == ("coreml",) and ios.platform_of("coreml") == "ios"
    assert set(every.target_names) == {"tflite", "ncnn", "coreml", "executorch"}
    assert [every.platform_of(name) for name in ("tflite", "ncnn", "coreml")] == ["android", "android", "ios"]
    # ExecuTorch ships to both, and is built by name or with all, not by the platform groups
    assert "executorch" not in build_spec({**NO_FLAGS, "target": "android"}).target_names
    assert "executorch" not in ios.target_names


def test_explain_on_a_damaged_core_ml_package_points_at_the_damaged_layer(ios_export, tmp_path):
    import shutil

    from click.testing import CliRunner

    from exporter.cli import main
    from tests.validation.test_explain import onnx_weighted_layers

    _, exported = ios_export
    model_dir = tmp_path / "my_mod"
    shutil.copytree(exported, model_dir)
    layers = onnx_weighted_layers(model_dir / "my_mod.onnx")
    broken = len(layers) // 2  # the digits net is a chain: the k-th ONNX Conv is the program's k-th conv
    scale_first_channel_of_conv(model_dir / "my_mod_fp32.mlpackage", broken, factor=-4.0)

    result = CliRunner().invoke(main, ["explain", str(model_dir), "--artifact", "my_mod_fp32.mlpackage"])

    assert result.exit_code == 0, result.output
    report = json.loads((model_dir / "my_mod_fp32.explain.json").read_text())
    assert report["runtime"] == "coreml" and report["unmatched"] == []
    assert report["jump"]["onnx_layer"] == layers[broken]
    assert report["jump"]["relative_error"] > 3 * report["jump"]["input_relative_error"]
    weighted = [layer for layer in report["layers"] if layer["onnx_op"].split("+")[0] in ("Conv", "Gemm")]
    assert len(weighted) == len(layers)  # every weighted layer was paired and compared
    assert any("reference ML Program evaluator" in note for note in report["notes"])
