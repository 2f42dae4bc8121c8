"""The export pipeline: ModelSource → module → ONNX (+ reference) → each target → parity → manifest.

Nothing reaches OUT/<model>/ before every stage has succeeded (exporter/publish.py). With keep_going, a
target that fails is recorded in the manifest and the other targets are still published. The earlier
artifacts of targets not asked for are kept, or refused, as exporter/earlier.py decides: the manifest lists
every artifact in the folder.
"""
from __future__ import annotations

import dataclasses
import platform
import shutil
import traceback
from dataclasses import dataclass
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np

from core.artifact import (VALIDATION_THREADS, Artifact, ConversionJob, OnnxModel, Outputs, Runner, outputs_of,
                           returned_values, run_in_chunks, to_onnx_shape)
from core.errors import ConverterError, InputError, MobileExportError, disk_full_cause, disk_full_error
from core.manifest import (MANIFEST_NAME, SCHEMA_VERSION, ArtifactRecord, ConversionRecord, ManifestArtifact,
                           conversion_of, write_json_atomically)
from core.output_kinds import resolve_kinds
from core.parity import ParityResult, compare_outputs, mixed_range_fields
from exporter import onnx_stage
from exporter.bundle import write_report_and_bundle
from exporter.cache import conversion_key, conversion_options, made_from, reusable_artifacts, with_conversion_record
from exporter.config import ExportSpec
from exporter.datasets import DatasetPlan, Datasets, build_datasets
from exporter.earlier import EarlierExport, Leftover, artifact_entries, kept_artifact, refuse_leftovers, survey
from exporter.images import BUILTIN_PHOTOS
from exporter.loading import open_checked, open_runner
from exporter.progress import StageClock
from exporter.publish import LABELS_NAME, LOGS_FOLDER, Publisher, exclusive_staging, prepare_model_dir, publishing
from exporter.sources import LoadedModel, copy_checked_onnx, load_model
from targets import REGISTRY, get_target, interchange_target

# Measured on the default MobileNetV2 (bench/results/heldout_photos_mobilenet_v2.md): int8 calibrated on
# scikit-image's photos agreed with float on 0.910 of crops of ImageNet photos, and on 0.96-0.98 once half of
# those photos calibrated it. The built-in photos are like an ImageNet model's; they are not like your app's.
BUILTIN_PHOTOS_HINT = ("calibrated and checked on built-in sample photos, not photos like your app's: pass --calib "
                       "(and --val) with ten or more of your own before you ship int8")

ONNX_WORK_NAME = "model.onnx"
SOURCE_ONNX_NAME = "source.onnx"


@dataclass(frozen=True)
class TargetFailure:
    """A target that failed while keep_going let the others finish."""

    target: str
    error: MobileExportError

    def to_manifest(self) -> dict:
        return {"target": self.target, "exit_code": self.error.exit_code, "error": self.error.message,
                "hint": self.error.hint, "kept": False}


@dataclass(frozen=True)
class ExportReport:
    model_dir: Path
    manifest_path: Path
    records: tuple[ArtifactRecord, ...]
    seconds: dict[str, float]
    failures: tuple[TargetFailure, ...] = ()
    earlier_failures: tuple[dict, ...] = ()  # targets an earlier export failed and this one did not try again
    removed: tuple[Leftover, ...] = ()  # what earlier exports left and the manifest no longer lists

    @property
    def passed(self) -> bool:
        return not self.failures and all(record.parity.passed for record in self.records)

    @property
    def failed(self) -> tuple[ArtifactRecord, ...]:
        return tuple(record for record in self.records if not record.parity.passed)


@dataclass(frozen=True)
class ExportRun:
    """What every stage after loading the model needs."""

    spec: ExportSpec
    loaded: LoadedModel
    labels: tuple[str, ...] | None
    datasets: Datasets
    model_dir: Path
    staging: Path  # private to this run, removed at its end; artifacts are built here
    clock: StageClock
    output_names: tuple[str, ...] | None  # a PyTorch model's, as check_model_runs named them; None for ONNX files
    output_kinds: dict[str, str] = dataclasses.field(default_factory=dict)  # every output's, once the ONNX is read

    def log_path(self, stage: str) -> Path:
        return self.model_dir / LOGS_FOLDER / f"{stage}.log"


def run_export(spec: ExportSpec, clock: StageClock, keep_going: bool = False) -> ExportReport:
    with clock.stage(f"load model {spec.model}"):
        loaded = load_model(spec.model, spec.weights, spec.trust_pickle)
        if loaded.weights and loaded.weights != spec.weights:
            clock.note(f"weights: {loaded.weights} (the zoo's default; --weights loads your own)")
        output_names = (onnx_stage.check_model_runs(loaded.module, spec.contract) if loaded.module is not None
                        else None)
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
        if datasets.description["calibration_source"] == BUILTIN_PHOTOS:
            clock.note(BUILTIN_PHOTOS_HINT)
    model_dir = prepare_model_dir(spec.out, loaded.name)
    try:
        with exclusive_staging(model_dir) as staging:
            run = ExportRun(spec, loaded, labels, datasets, model_dir, staging, clock, output_names)
            return _export_into(run, keep_going)
    except Exception as error:
        if disk_full_cause(error) is not None:  # converters wrap it: look behind their errors
            raise disk_full_error(spec.out) from None
        raise


def _export_into(run: ExportRun, keep_going: bool) -> ExportReport:
    onnx_model, reference, reference_name = _onnx_stage(run)
    run = dataclasses.replace(run, output_kinds=resolve_kinds(
        {output.name: output.shape for output in onnx_model.outputs}, run.spec.output_kinds))
    _check_finite(reference)
    _check_labels(run.labels, reference)
    _note_mixed_ranges(run, reference)
    job = _conversion_job(run, onnx_model)
    inputs = made_from(job)  # the ONNX file is fingerprinted before publishing moves it
    earlier = survey(run.model_dir, inputs, (interchange_target().name, *run.spec.target_names))
    if not run.spec.rebuild:
        refuse_leftovers(run.model_dir, earlier)  # before converting: a refusal costs seconds, not minutes
    measured, failures = _measure_all(run, job, reference, earlier, keep_going)
    with run.clock.stage("write artifacts and manifest"), publishing(run.staging) as publisher:
        records = tuple(ArtifactRecord(_published(publisher, artifact, run), platform, parity)
                        for artifact, parity, platform in measured)
        removed = (*_remove_unlisted(publisher, run, records, earlier, failures), *_publish_labels(publisher, run))
        manifest = _manifest(run, onnx_model, inputs, reference_name, records, failures, earlier.failures)
        manifest_path = run.model_dir / MANIFEST_NAME
        write_json_atomically(manifest_path, manifest)
    with run.clock.stage("write report.html, report.md and bundle.zip"):
        # Rewritten with every export, so the folder never holds a report or bundle of earlier artifacts.
        write_report_and_bundle(run.model_dir)
    return ExportReport(run.model_dir, manifest_path, records, dict(run.clock.seconds), tuple(failures),
                        earlier.failures, removed)


def _measure_all(run: ExportRun, job: ConversionJob, reference: Outputs, earlier: EarlierExport,
                 keep_going: bool) -> tuple[list[tuple[Artifact, ParityResult, str]], list[TargetFailure]]:
    """(artifact, parity, platform) for the ONNX model, each target asked for and each kept one, in the
    registry's order; and the targets that failed while keep_going let the others finish."""
    interchange = interchange_target()
    measured = []
    with run.clock.stage(f"parity {interchange.name} fp32"):
        artifact = interchange.interchange_artifact(job.onnx)
        measured.append((*_measure(artifact, _open(artifact, run, interchange.name), reference, run),
                         run.spec.platform))
    failures: list[TargetFailure] = []
    for target_name in run.spec.target_names:
        measured += _attempt(run, target_name, keep_going, failures,
                             partial(_convert_and_measure, run, target_name, job, reference))
    for runtime in earlier.kept_runtimes():
        run.clock.note(f"{runtime}: not asked for this time; keeping the earlier export's artifacts (made from the "
                       "same model, contract and calibration; their parity is measured again)")
        measured += _attempt(run, runtime, keep_going, failures,
                             partial(_measure_kept, run, earlier.kept_of(runtime), reference))
    measured.sort(key=lambda item: list(REGISTRY).index(item[0].runtime))
    return measured, failures


def _conversion_job(run: ExportRun, onnx_model: OnnxModel) -> ConversionJob:
    """What every target converts; each gets its own workdir and log (_convert_and_measure)."""
    spec = run.spec
    return ConversionJob(
        onnx=onnx_model, contract=spec.contract, calibration=run.datasets.calibration, workdir=run.staging,
        log_path=run.log_path(interchange_target().name), timeout_s=spec.timeout_s, int8_io=spec.int8_io,
        torch_module=run.loaded.module, labels=run.labels, coreml_palettize=spec.coreml_palettize,
        coreml_w8a8=spec.coreml_w8a8,
        int8_fallback_gate=None if spec.pure_int8 else spec.thresholds["int8"], output_kinds=run.output_kinds,
    )


def _attempt(run: ExportRun, target_name: str, keep_going: bool, failures: list[TargetFailure], step) -> list:
    """step()'s measured artifacts; with keep_going a failure is added to `failures` and nothing is returned."""
    try:
        return step()
    except Exception as error:
        if not keep_going or disk_full_cause(error) is not None:
            raise
        failures.append(_target_failure(target_name, error, run.log_path(target_name)))
        run.clock.note(f"{target_name} FAILED, going on with the other targets: "
                       f"{failures[-1].error.message.splitlines()[0]}")
        return []


def _convert_and_measure(run: ExportRun, target_name: str, job: ConversionJob, reference: Outputs) -> list:
    """(artifact, parity, platform) for each artifact of one target."""
    workdir = run.staging / target_name
    workdir.mkdir()
    job = dataclasses.replace(job, workdir=workdir, log_path=run.log_path(target_name))
    with run.clock.stage(f"convert {target_name}"):
        artifacts = _converted_or_reused(get_target(target_name), job, run)
    return _measure_each(run, artifacts, run.spec.platform_of(target_name), reference, target_name)


def _measure_kept(run: ExportRun, entries: tuple[ManifestArtifact, ...], reference: Outputs) -> list:
    """Parity of another target's artifacts, in place, against this export's reference and thresholds."""
    artifacts = [kept_artifact(entry, run.model_dir) for entry in entries]
    return _measure_each(run, artifacts, entries[0].platform, reference, entries[0].runtime)


def _measure_each(run: ExportRun, artifacts: list[Artifact], platform: str, reference: Outputs,
                  log_name: str) -> list:
    measured = []
    for artifact in artifacts:
        with run.clock.stage(f"parity {artifact.runtime} {artifact.precision}"):
            _, parity = _measure(artifact, _open(artifact, run, log_name), reference, run)
        measured.append((artifact, parity, platform))
        run.clock.note(_parity_line(artifact, parity))
    return measured


def _converted_or_reused(target, job: ConversionJob, run: ExportRun) -> list[Artifact]:
    """The target's artifacts: those of the previous export when nothing that shapes them changed
    (exporter/cache.py), else a fresh conversion."""
    tool_versions = target.tool_versions()
    key = conversion_key(job, target.name, tool_versions)
    reused = None if run.spec.rebuild else reusable_artifacts(run.model_dir, target.runtime, key, job.workdir)
    if reused is not None:
        run.clock.note(f"{target.name}: inputs, options and converters unchanged since the last export: "
                       "reusing its artifacts (parity is measured again; --rebuild converts anyway)")
    artifacts = reused if reused is not None else target.convert(job)
    record = ConversionRecord(key, reused is not None, options=conversion_options(job), tools=tool_versions)
    return [with_conversion_record(artifact, record) for artifact in artifacts]


def _target_failure(target_name: str, error: Exception, log_path: Path) -> TargetFailure:
    if isinstance(error, MobileExportError):
        return TargetFailure(target_name, error)
    with open(log_path, "a", encoding="utf-8") as log:  # a bug, ours or a library's: keep the traceback
        traceback.print_exception(error, file=log)
    return TargetFailure(target_name, ConverterError(
        f"unexpected {type(error).__name__} in the {target_name} target: {error}",
        hint=f"the traceback is in {log_path}; please report it",
    ))


def _onnx_stage(run: ExportRun):
    interchange = interchange_target()
    spec, loaded, log_path = run.spec, run.loaded, run.log_path(interchange.name)
    onnx_path = run.staging / ONNX_WORK_NAME
    if loaded.module is not None:
        with run.clock.stage("export ONNX"):
            onnx_stage.export_from_torch(loaded.module, spec.contract, onnx_path, log_path, run.output_names)
    else:
        # The user's file is the reference. It is checked and run in a child process before onnxsim runs
        # it in this one: a hostile or damaged graph must not be able to crash the export.
        with run.clock.stage("read ONNX"):
            source = run.staging / SOURCE_ONNX_NAME
            copy_checked_onnx(loaded.onnx_path, source)
            source_artifact = interchange.interchange_artifact(onnx_stage.describe(source, spec.contract))
            source_runner = _open(source_artifact, run, interchange.name)
        with run.clock.stage("reference outputs"):
            reference = source_runner.run_outputs(run.datasets.validation)
            reference_name = "onnxruntime on the source ONNX file"
        shutil.copyfile(source, onnx_path)
    with run.clock.stage("simplify and check ONNX"):
        onnx_stage.simplify_and_check(onnx_path, log_path)
        onnx_model = onnx_stage.describe(onnx_path, spec.contract)
    if loaded.module is not None:
        with run.clock.stage("reference outputs"):
            reference = _torch_outputs(loaded.module, run.datasets.validation, spec.contract.input_shape[0],
                                       onnx_model.output_names)
            reference_name = "pytorch"
    return onnx_model, reference, reference_name


def _open(artifact: Artifact, run: ExportRun, stage: str) -> Runner:
    """Native runtimes open each artifact in a child first (exporter/loading.py); our Python reference
    evaluator (Core ML off macOS) cannot crash the interpreter, and starting torch in a child is slow."""
    if artifact.details.get("evaluator") == "reference":
        return open_runner(artifact)
    return open_checked(artifact, run.spec.contract.input_shape, log_path=run.log_path(stage))


def _torch_outputs(module, samples: np.ndarray, model_batch: int, names: tuple[str, ...]) -> Outputs:
    """Run at the contract's batch size: traced and exported programs may be specialized to it. `names`: the
    ONNX model's outputs, which the export gave the module's outputs in the order it returns them."""
    import torch

    def run_fixed_batch(batch: np.ndarray) -> Outputs:
        values = returned_values(module(torch.from_numpy(batch)))
        return {name: value.detach().float().numpy() for name, value in zip(names, values, strict=True)}

    threads = torch.get_num_threads()
    torch.set_num_threads(VALIDATION_THREADS)  # as for every reference run: see core/artifact.py
    try:
        with torch.no_grad():
            return run_in_chunks(run_fixed_batch, samples, model_batch)
    finally:
        torch.set_num_threads(threads)


def _measure(artifact: Artifact, runner: Runner, reference: Outputs, run: ExportRun):
    outputs = outputs_of(runner, run.datasets.validation, tuple(reference))
    # Runtimes may keep or drop unit axes; layouts are the runner's job. A shape that differs in more is left for
    # the comparison to report.
    for name, values in outputs.items():
        if name in reference:
            reshaped = to_onnx_shape(values, reference[name].shape)
            outputs[name] = values if reshaped is None else reshaped
    return artifact, compare_outputs(reference, outputs, run.spec.thresholds[artifact.precision], run.output_kinds)


def _published(publisher: Publisher, artifact: Artifact, run: ExportRun) -> Artifact:
    conversion = conversion_of(artifact.details)
    if conversion is not None and conversion.kept:
        return artifact  # in its place since the export that made it
    return _publish(publisher, artifact, run.model_dir, run.loaded.name)


def _remove_unlisted(publisher: Publisher, run: ExportRun, records: tuple[ArtifactRecord, ...],
                     earlier: EarlierExport, failures: list[TargetFailure]) -> tuple[Leftover, ...]:
    """Take every artifact the new manifest does not list out of the folder (roll_back puts them back), and
    return them with what earlier exports listed whose files are all gone: each with why it is not listed."""
    listed = {path.relative_to(run.model_dir).parts[0] for record in records for path in record.artifact.files}
    failed = {failure.target for failure in failures}
    removed = []
    for entry in artifact_entries(run.model_dir):
        if entry.name not in listed:
            publisher.remove(entry)
            removed.append(Leftover(entry.name, earlier.why_removed(entry.name, failed), (entry.name,)))
    gone = tuple(leftover for leftover in earlier.leftovers if not leftover.paths)
    return (*removed, *gone)


def _publish_labels(publisher: Publisher, run: ExportRun) -> tuple[Leftover, ...]:
    """labels.txt is this export's labels; an earlier export's goes when this one has none."""
    path = run.model_dir / LABELS_NAME
    if run.labels:
        publisher.move(_staged_labels(run.labels, run.staging), path)
    elif path.exists():
        publisher.remove(path)
        return (Leftover(LABELS_NAME, "an earlier export's labels: this one was given none", (LABELS_NAME,)),)
    return ()


def _publish(publisher: Publisher, artifact: Artifact, model_dir: Path, model_name: str) -> Artifact:
    """Move an artifact's files from staging to their final names (atomic renames on one file system)."""

    def final_path(staged: Path) -> Path:
        kind = staged.name.split(".", 1)[1]  # the extension(s): "tflite", "ncnn.param", "ncnn.bin"
        suffix = "" if get_target(artifact.runtime).interchange else f"_{artifact.precision}"
        return model_dir / f"{model_name}{suffix}.{kind}"

    published = artifact.renamed(final_path)
    for staged, final in zip(artifact.files, published.files):
        publisher.move(staged, final)
    return published


def _staged_labels(labels: tuple[str, ...], staging: Path) -> Path:
    path = staging / LABELS_NAME
    path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return path


def _labels(spec: ExportSpec, loaded: LoadedModel) -> tuple[str, ...] | None:
    if spec.labels is None:
        return loaded.labels
    if not spec.labels.is_file():
        raise InputError(f"labels file {spec.labels} does not exist", hint="pass a text file with one class name per line")
    labels = tuple(line.strip() for line in spec.labels.read_text(encoding="utf-8").splitlines() if line.strip())
    if not labels:
        raise InputError(f"labels file {spec.labels} is empty", hint="write one class name per line")
    return labels


def _check_labels(labels, reference: Outputs) -> None:
    if not labels:
        return
    if len(reference) != 1:
        raise InputError(f"--labels names the classes of one output, and the model has {len(reference)} "
                         f"({', '.join(reference)})", hint="export a model with several outputs without --labels")
    (reference,) = reference.values()
    if reference.ndim == 2 and len(labels) != reference.shape[1]:
        raise InputError(
            f"the labels file has {len(labels)} names but the model outputs {reference.shape[1]} classes",
            hint="give exactly one label per output class, in class-index order",
        )


def _check_finite(reference: Outputs) -> None:
    """A reference with NaN or Inf cannot judge any artifact (every comparison with it fails or means nothing)."""
    for name, values in reference.items():
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            raise InputError(
                f"the model's output {name!r} is NaN or infinite on {int(bad.sum())} of {len(values)} validation "
                "samples, before any conversion",
                hint="check the model and its weights in PyTorch on these inputs (a division by zero, a log of 0, "
                     "an overflow), and that --mean/--std match its training",
            )


def _note_mixed_ranges(run: ExportRun, reference: Outputs) -> None:
    """Before converting: an output whose fields are too far apart for one int8 scale (boxes next to scores)."""
    for name, values in reference.items():
        mixed = mixed_range_fields(values)
        if mixed is not None:
            field, spread, step = mixed
            run.clock.note(f"output {name!r}: field {field} of the last axis spreads {spread:.3g}, a few int8 steps "
                           f"({step:.3g}) of one scale over the whole tensor: the TFLite int8 model keeps it in float, "
                           "other int8 artifacts may fail parity on it; return such values as separate outputs (a "
                           "tuple or dict) so each keeps its own scale")


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
    each = ", ".join(f"{name} {result.cosine:.6f}" for name, result in parity.per_output)
    cosine = f"cosine {parity.cosine:.6f}" + (f" (the lowest of {each})" if each else "")
    return f"{artifact.runtime} {artifact.precision}: {cosine}{top1}{run_by} — {verdict}"


def _manifest(run: ExportRun, onnx_model, made_from_inputs: dict, reference_name, records, failures,
              earlier_failures: tuple[dict, ...]) -> dict:
    spec, loaded, labels = run.spec, run.loaded, run.labels
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {"name": loaded.name, "source": loaded.source, "weights": loaded.weights},
        "input": {**spec.contract.to_manifest(), "name": onnx_model.input_name},
        "output": onnx_model.outputs_to_manifest()[0],  # the first; "outputs" lists every one in order
        "outputs": [{**output, "kind": run.output_kinds.get(output["name"])} for output in onnx_model.outputs_to_manifest()],
        "labels": {"path": LABELS_NAME, "count": len(labels)} if labels else None,
        "made_from": made_from_inputs,
        "parity_reference": reference_name,
        "data": run.datasets.description,
        # Over every artifact in the folder, kept ones included (their parity was measured by this export).
        "gates_passed": not failures and not earlier_failures and all(r.parity.passed for r in records),
        "artifacts": [{**record.to_manifest(run.model_dir),
                       "reproducible": get_target(record.artifact.runtime).is_reproducible(record.artifact.precision)}
                      for record in records],
        "failed_targets": [*(failure.to_manifest() for failure in failures), *earlier_failures],
        "tools": _tools(records),
        "stage_seconds": {name: round(value, 2) for name, value in run.clock.seconds.items()},
    }


def _tools(records) -> dict[str, str]:
    """Ours and the libraries', then each artifact's converters as it was made (a kept one's may be older)."""
    tools = _base_tool_versions()
    for record in records:
        conversion = conversion_of(record.artifact.details)
        if conversion is not None:
            tools.update(conversion.tools)
    return tools
