"""Reuse of converted artifacts when nothing that shapes them changed: an unchanged model re-exports in seconds.

A target's conversion is a function of the ONNX graph, the input contract, the calibration tensor, the export
options, the converter versions and our own conversion code. Its key is the SHA-256 of all of them. When the
previous manifest in the model folder lists artifacts converted under the same key, and their files still have
the checksums it recorded, the target is not converted again: the published files are copied back into the
target's staging folder and go through parity and publishing exactly like fresh ones.

Each artifact's manifest entry records its key, the options it was converted with and its converters' versions
(core.manifest.ConversionRecord), and the manifest records what all of them were made from (MADE_FROM): that is
how a later export of other targets into the same folder decides to keep them (exporter/earlier.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from core.artifact import Artifact, ConversionJob, OnnxModel
from core.errors import InputError
from core.manifest import CONVERSION_DETAIL, ConversionRecord, ManifestArtifact, read_manifest, sha256_of

# Job fields that say where to work or how long to wait, not what to build.
NOT_SHAPING_THE_RESULT = {"workdir", "log_path", "timeout_s", "torch_module"}


@dataclass(frozen=True)
class MadeFrom:
    """Something every artifact listed in one folder must share: with another value it is another model's."""

    value_of: Callable[[ConversionJob], object]
    other: str  # what another value means, for the message that will not keep an artifact
    embedded_only: bool = False  # shared only by the artifacts of runtimes that embed it (Target.embeds_labels)


# By their names under the manifest's "made_from".
MADE_FROM = {
    "graph": MadeFrom(lambda job: job.onnx, "another ONNX graph (other weights or another model, or another torch "
                                            "or onnx version)"),
    "contract": MadeFrom(lambda job: job.contract, "another input contract (shape, mean, std, color or pixel scale)"),
    "calibration": MadeFrom(lambda job: job.calibration, "other calibration photos"),
    "labels": MadeFrom(lambda job: job.labels, "other labels", embedded_only=True),
}
# The job's other fields that shape artifacts: how, not from what; each artifact records its own.
OPTIONS = ("int8_io", "coreml_palettize", "coreml_w8a8", "int8_fallback_gate", "output_kinds")
# The floors conversions run on: a change there may change what a target builds.
CONVERSION_CODE = tuple(Path(__file__).resolve().parents[1] / floor for floor in ("core", "graph", "targets"))


def conversion_key(job: ConversionJob, target_name: str, tool_versions: dict[str, str]) -> str:
    """SHA-256 over everything that shapes a target's artifacts. The torch module is covered by the ONNX
    graph exported from it (same weights and structure, same bytes)."""
    digest = hashlib.sha256()
    digest.update(f"target={target_name}\n".encode())
    digest.update(json.dumps(tool_versions, sort_keys=True).encode())
    digest.update(_code_fingerprint().encode())
    for field in dataclasses.fields(job):
        if field.name in NOT_SHAPING_THE_RESULT:
            continue
        digest.update(f"\n{field.name}=".encode())
        digest.update(_value_fingerprint(getattr(job, field.name)).encode())
    return digest.hexdigest()


def made_from(job: ConversionJob) -> dict[str, str]:
    """A SHA-256 of each MADE_FROM value of the job, as the manifest records them under "made_from"."""
    return {name: hashlib.sha256(_value_fingerprint(made.value_of(job)).encode()).hexdigest()
            for name, made in MADE_FROM.items()}


def conversion_options(job: ConversionJob) -> dict:
    """The job's OPTIONS as JSON values, as each artifact's conversion record keeps them."""
    return {name: _json_value(getattr(job, name)) for name in OPTIONS}


def _json_value(value):
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _value_fingerprint(value) -> str:
    if isinstance(value, OnnxModel):
        return sha256_of(value.path) + repr(dataclasses.replace(value, path=Path(value.path.name)))
    if isinstance(value, np.ndarray):
        return hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest() + repr((value.shape, value.dtype))
    if dataclasses.is_dataclass(value):
        return repr(dataclasses.asdict(value))
    return repr(value)


def _code_fingerprint() -> str:
    """Our own conversion code: a change to any module a target runs must not reuse artifacts it would build
    otherwise."""
    digest = hashlib.sha256()
    for floor in CONVERSION_CODE:
        for path in sorted(floor.rglob("*.py")):
            digest.update(path.relative_to(floor.parent).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def with_conversion_record(artifact: Artifact, record: ConversionRecord) -> Artifact:
    details = {**artifact.details, CONVERSION_DETAIL: record.to_manifest()}
    return dataclasses.replace(artifact, details=details)


def reusable_artifacts(model_dir: Path, runtime: str, key: str, workdir: Path) -> list[Artifact] | None:
    """The previous export's artifacts of `runtime` converted under `key`, copied into `workdir`; None when
    there are none, or any of their files is missing or no longer matches its recorded checksum."""
    entries = [entry for entry in _previous_artifacts(model_dir)
               if entry.runtime == runtime and entry.conversion is not None and entry.conversion.key == key]
    if not entries or not all(files_intact(model_dir, entry) for entry in entries):
        return None
    return [_staged_copy(model_dir, entry, workdir) for entry in entries]


def _previous_artifacts(model_dir: Path) -> tuple[ManifestArtifact, ...]:
    try:
        return read_manifest(model_dir).artifacts
    except InputError:
        return ()  # no previous export, or one we cannot read: convert afresh


def files_intact(model_dir: Path, entry: ManifestArtifact) -> bool:
    """Every file of the manifest entry is in the folder with the checksum the manifest recorded."""
    for record in entry.files:
        path = model_dir / record.path
        if not _inside(path, model_dir) or not path.exists() or sha256_of(path) != record.sha256:
            return False
    return bool(entry.files)


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _staged_copy(model_dir: Path, entry: ManifestArtifact, workdir: Path) -> Artifact:
    copies = []
    for record in entry.files:
        source = model_dir / record.path
        copy = workdir / source.name
        if source.is_dir():
            shutil.copytree(source, copy)
        else:
            shutil.copy2(source, copy)
        copies.append(copy)
    details = {k: v for k, v in entry.details.items() if k != CONVERSION_DETAIL}
    return Artifact(path=copies[0], runtime=entry.runtime, precision=entry.precision,
                    companions=tuple(copies[1:]), details=details)
