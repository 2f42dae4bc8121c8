"""Reuse of converted artifacts when nothing that shapes them changed: an unchanged model re-exports in seconds.

A target's conversion is a function of the ONNX graph, the input contract, the calibration tensor, the export
options, the converter versions and our own conversion code. Its key is the SHA-256 of all of them. When the
previous manifest in the model folder lists artifacts converted under the same key, and their files still have
the checksums it recorded, the target is not converted again: the published files are copied back into the
target's staging folder and go through parity and publishing exactly like fresh ones.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from core.artifact import Artifact, ConversionJob, OnnxModel
from core.errors import InputError
from core.manifest import ManifestArtifact, read_manifest, sha256_of

CONVERSION_DETAIL = "conversion"  # the key under an artifact's manifest details that records its cache key
# Job fields that say where to work or how long to wait, not what to build.
NOT_SHAPING_THE_RESULT = {"workdir", "log_path", "timeout_s", "torch_module"}
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


def with_conversion_record(artifact: Artifact, key: str, reused: bool) -> Artifact:
    details = {**artifact.details, CONVERSION_DETAIL: {"key": key, "reused": reused}}
    return dataclasses.replace(artifact, details=details)


def reusable_artifacts(model_dir: Path, runtime: str, key: str, workdir: Path) -> list[Artifact] | None:
    """The previous export's artifacts of `runtime` converted under `key`, copied into `workdir`; None when
    there are none, or any of their files is missing or no longer matches its recorded checksum."""
    entries = [entry for entry in _previous_artifacts(model_dir)
               if entry.runtime == runtime and (entry.details.get(CONVERSION_DETAIL) or {}).get("key") == key]
    if not entries or not all(_files_intact(model_dir, entry) for entry in entries):
        return None
    return [_staged_copy(model_dir, entry, workdir) for entry in entries]


def _previous_artifacts(model_dir: Path) -> tuple[ManifestArtifact, ...]:
    try:
        return read_manifest(model_dir).artifacts
    except InputError:
        return ()  # no previous export, or one we cannot read: convert afresh


def _files_intact(model_dir: Path, entry: ManifestArtifact) -> bool:
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
