"""The export pipeline: ModelSource → module → ONNX (+ reference) → each target → parity → manifest."""
from __future__ import annotations

import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from exporter import onnx_stage
from exporter.config import ExportSpec
from exporter.datasets import DatasetPlan, Datasets, build_datasets
from exporter.errors import InputError
from exporter.manifest import MANIFEST_NAME, SCHEMA_VERSION, ArtifactRecord, write_json_atomically
from exporter.progress import StageClock
from exporter.sources import LoadedModel, load_model
from targets import get_target
from targets.base import Artifact, ConversionJob, OnnxModel, Runner, run_in_chunks
from validation.parity import ParityResult, compare

LABELS_NAME = "labels.txt"
ONNX_WORK_NAME = "model.onnx"


@dataclass(frozen=True)
class ExportReport:
    model_dir: Path
    manifest_path: Path
    records: tuple[ArtifactRecord, ...]
    seconds: dict[str, float]

    @property
    def passed(self) -> bool:
        return all(record.parity.passed for record in self.records)

    @property
    def failed(self) -> tuple[ArtifactRecord, ...]:
        return tuple(record for record in self.records if not record.parity.passed)


def run_export(spec: ExportSpec, clock: StageClock) -> ExportReport:
    with clock.stage(f"load model {spec.model}"):
        loaded = load_model(spec.model, spec.weights, spec.trust_pickle)
        if loaded.module is not None:
            onnx_stage.check_model_runs(loaded.module, spec.contract)
        labels = _labels(spec, loaded)
    with clock.stage("prepare calibration and validation images"):
        datasets = build_datasets(
            DatasetPlan(spec.calib, spec.val, calibration_samples=spec.calibration_samples), spec.contract
        )
        datasets = _trim_to_batch(datasets, spec.contract.input_shape[0])
        clock.note(
            f"{len(datasets.calibration)} calibration samples from {datasets.description['calibration_source']}, "
            f"{len(datasets.validation)} validation samples ({datasets.description['validation_source']})"
        )
    model_dir = spec.out / loaded.name
    model_dir.mkdir(parents=True, exist_ok=True)
    logs_dir = model_dir / "logs"
    logs_dir.mkdir(exist_ok=True)
    # Staging lives inside the model folder so the final renames stay on one file system (atomic).
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=model_dir)).resolve()  # converters run in other cwds
    try:
        return _export_into(spec, loaded, labels, datasets, model_dir, staging, logs_dir, clock)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _export_into(spec, loaded, labels, datasets, model_dir, staging, logs_dir, clock) -> ExportReport:
    onnx_model, reference, reference_name = _onnx_stage(spec, loaded, datasets, staging, logs_dir, clock)
    _check_labels(labels, reference)
    measured: list[tuple[Artifact, ParityResult, str]] = []  # artifact, parity, platform
    with clock.stage("parity onnx fp32"):
        onnx_runner = onnx_stage.OnnxRuntimeRunner(onnx_model)
        measured.append((*_measure(_onnx_artifact(onnx_model), onnx_runner, reference, datasets, spec), spec.platform))
    tool_versions = _base_tool_versions()
    for target_name in spec.target_names:
        target = get_target(target_name)
        workdir = staging / target_name
        workdir.mkdir()
        job = ConversionJob(
            onnx=onnx_model, contract=spec.contract, calibration=datasets.calibration, workdir=workdir,
            log_path=logs_dir / f"{target_name}.log", timeout_s=spec.timeout_s, int8_io=spec.int8_io,
            torch_module=loaded.module,
        )
        with clock.stage(f"convert {target_name}"):
            artifacts = target.convert(job)
        tool_versions.update(target.tool_versions())
        for artifact in artifacts:
            with clock.stage(f"parity {artifact.runtime} {artifact.precision}"):
                parity = _measure(artifact, target.load(artifact), reference, datasets, spec)
                measured.append((*parity, spec.platform_of(target_name)))
                clock.note(_parity_line(artifact, measured[-1][1]))
    with clock.stage("write artifacts and manifest"):
        records = tuple(
            ArtifactRecord(_publish(artifact, model_dir, loaded.name), platform, parity)
            for artifact, parity, platform in measured
        )
        if labels:
            (model_dir / LABELS_NAME).write_text("\n".join(labels) + "\n", encoding="utf-8")
        manifest = _manifest(spec, loaded, labels, datasets, onnx_model, reference_name, records, tool_versions,
                             model_dir, clock.seconds)
        manifest_path = model_dir / MANIFEST_NAME
        write_json_atomically(manifest_path, manifest)
    return ExportReport(model_dir, manifest_path, records, dict(clock.seconds))


def _onnx_stage(spec, loaded: LoadedModel, datasets: Datasets, staging: Path, logs_dir: Path, clock: StageClock):
    onnx_path = staging / ONNX_WORK_NAME
    log_path = logs_dir / "onnx.log"
    with clock.stage("export ONNX" if loaded.module is not None else "read ONNX"):
        if loaded.module is not None:
            onnx_stage.export_from_torch(loaded.module, spec.contract, onnx_path, log_path)
        else:
            onnx_stage.copy_onnx_source(loaded.onnx_path, onnx_path)
    with clock.stage("simplify and check ONNX"):
        onnx_stage.simplify_and_check(onnx_path, log_path)
        onnx_model = onnx_stage.describe(onnx_path, spec.contract)
    with clock.stage("reference outputs"):
        if loaded.module is not None:
            reference = _torch_outputs(loaded.module, datasets.validation, spec.contract.input_shape[0])
            reference_name = "pytorch"
        else:
            # With an ONNX source there is no PyTorch model: the unsimplified original is the reference.
            original = OnnxModel(loaded.onnx_path, onnx_model.input_name, onnx_model.output_name,
                                 onnx_model.input_shape, onnx_model.output_shape)
            reference = onnx_stage.OnnxRuntimeRunner(original).run(datasets.validation)
            reference_name = "onnxruntime on the source ONNX file"
    return onnx_model, reference, reference_name


def _torch_outputs(module, samples: np.ndarray, model_batch: int) -> np.ndarray:
    """Run at the contract's batch size: traced and exported programs may be specialized to it."""
    import torch

    def run_fixed_batch(batch: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(batch)).detach().float().numpy()

    with torch.no_grad():
        return run_in_chunks(run_fixed_batch, samples, model_batch)


def _measure(artifact: Artifact, runner: Runner, reference: np.ndarray, datasets: Datasets, spec: ExportSpec):
    outputs = runner.run(datasets.validation)
    # Runtimes may keep or drop unit axes (N x 1000 x 1 x 1 vs N x 1000); layouts are the runner's job.
    if outputs.shape != reference.shape and _squeezed(outputs.shape) == _squeezed(reference.shape):
        outputs = outputs.reshape(reference.shape)
    return artifact, compare(reference, outputs, spec.thresholds[artifact.precision])


def _squeezed(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _onnx_artifact(onnx_model: OnnxModel) -> Artifact:
    return Artifact(path=onnx_model.path, runtime="onnx", precision="fp32",
                    details={"opset": onnx_stage.OPSET, "input_name": onnx_model.input_name,
                             "output_name": onnx_model.output_name, "layout": "NCHW"})


def _publish(artifact: Artifact, model_dir: Path, model_name: str) -> Artifact:
    """Move an artifact's files from staging to their final names (atomic renames on one file system)."""

    def final_path(staged: Path) -> Path:
        kind = staged.name.split(".", 1)[1]  # "tflite", "onnx", "ncnn.param", "ncnn.bin"
        suffix = "" if artifact.runtime == "onnx" else f"_{artifact.precision}"
        return model_dir / f"{model_name}{suffix}.{kind}"

    published = artifact.renamed(final_path)
    for staged, final in zip(artifact.files, published.files):
        if final.is_dir():  # an .mlpackage is a folder: a rename cannot replace a non-empty one
            shutil.rmtree(final)
        os.replace(staged, final)
    return published


def _labels(spec: ExportSpec, loaded: LoadedModel) -> tuple[str, ...] | None:
    if spec.labels is None:
        return loaded.labels
    if not spec.labels.is_file():
        raise InputError(f"labels file {spec.labels} does not exist", hint="pass a text file with one class name per line")
    labels = tuple(line.strip() for line in spec.labels.read_text(encoding="utf-8").splitlines() if line.strip())
    if not labels:
        raise InputError(f"labels file {spec.labels} is empty", hint="write one class name per line")
    return labels


def _check_labels(labels, reference: np.ndarray) -> None:
    if labels and reference.ndim == 2 and len(labels) != reference.shape[1]:
        raise InputError(
            f"the labels file has {len(labels)} names but the model outputs {reference.shape[1]} classes",
            hint="give exactly one label per output class, in class-index order",
        )


def _trim_to_batch(datasets: Datasets, batch: int) -> Datasets:
    """Models with a fixed batch > 1 need sample counts that are a multiple of it."""
    if batch == 1:
        return datasets
    calibration = datasets.calibration[: len(datasets.calibration) // batch * batch]
    validation = datasets.validation[: len(datasets.validation) // batch * batch]
    if len(validation) == 0 or len(calibration) == 0:
        raise InputError(f"fewer images than the batch size {batch}", hint="use batch 1 or give more images")
    return Datasets(calibration, validation, datasets.description)


def _base_tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("mobile-export", "torch", "onnx", "onnxruntime", "onnxsim", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def _parity_line(artifact: Artifact, parity: ParityResult) -> str:
    top1 = "" if parity.top1_agreement is None else f", top-1 agreement {parity.top1_agreement:.3f}"
    verdict = "passed" if parity.passed else "FAILED: " + "; ".join(parity.failures)
    evaluator = artifact.details.get("evaluator")  # set by targets that cannot always run their runtime here
    run_by = f" (run by the {evaluator} evaluator)" if evaluator else ""
    return f"{artifact.runtime} {artifact.precision}: cosine {parity.cosine:.6f}{top1}{run_by} — {verdict}"


def _manifest(spec, loaded, labels, datasets, onnx_model, reference_name, records, tool_versions, model_dir, seconds):
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": loaded.name, "source": loaded.source, "weights": loaded.weights},
        "input": {**spec.contract.to_manifest(), "name": onnx_model.input_name},
        "output": {"name": onnx_model.output_name, "shape": list(onnx_model.output_shape)},
        "labels": {"path": LABELS_NAME, "count": len(labels)} if labels else None,
        "parity_reference": reference_name,
        "data": datasets.description,
        "int8_io": "int8" if spec.int8_io else "float32",
        "gates_passed": all(r.parity.passed for r in records),
        "artifacts": [record.to_manifest(model_dir) for record in records],
        "tools": tool_versions,
        "stage_seconds": {name: round(value, 2) for name, value in seconds.items()},
    }
