"""The manifest: what was built, its checksums, its parity, and how to feed it. Written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from core.artifact import Artifact
from core.contract import InputContract
from core.errors import InputError
from core.parity import ParityResult
from core.target import SnippetContract

MANIFEST_NAME = "manifest.json"
# 2: "made_from" (what every listed artifact was made from), artifacts kept from earlier exports of other targets
# (details.conversion: kept, options, tools), earlier failures carried in "failed_targets", no top-level "int8_io"
# (each artifact's conversion options say how it was made). The reader takes 1 and 2.
SCHEMA_VERSION = 2
CONVERSION_DETAIL = "conversion"  # the key under an artifact's details that holds its ConversionRecord


@dataclass(frozen=True)
class ArtifactRecord:
    artifact: Artifact  # paths are final, inside the model folder
    platform: str
    parity: ParityResult

    def to_manifest(self, model_dir: Path) -> dict:
        files = [file_record(path, model_dir) for path in self.artifact.files]
        return {
            "path": files[0]["path"],
            "target": self.platform,
            "runtime": self.artifact.runtime,
            "precision": self.artifact.precision,
            "sha256": files[0]["sha256"],
            "bytes": files[0]["bytes"],
            "files": files,
            "total_bytes": sum(f["bytes"] for f in files),
            "parity": self.parity.to_manifest(),
            "details": self.artifact.details,
        }


@dataclass(frozen=True)
class ConversionRecord:
    """How a converted artifact was made: what lets a later export reuse it, or keep it beside other targets."""

    key: str  # SHA-256 over everything that shaped it (exporter/cache.py): the reuse key it was made under
    reused: bool  # its files come from an earlier export, not from this export's converter
    kept: bool = False  # its target was not asked for: kept from an earlier export, its parity measured again
    options: dict = field(default_factory=dict)  # the export options it was converted with (int8_io, ...)
    tools: dict = field(default_factory=dict)  # its converters' versions

    def to_manifest(self) -> dict:
        return asdict(self)


def conversion_of(details: dict) -> ConversionRecord | None:
    """An artifact's conversion record from its manifest details; None for the ONNX model nothing converted."""
    record = details.get(CONVERSION_DETAIL)
    if not isinstance(record, dict):
        return None
    return ConversionRecord(str(record["key"]), bool(record["reused"]), bool(record.get("kept", False)),
                            dict(record.get("options") or {}), dict(record.get("tools") or {}))


def file_record(path: Path, model_dir: Path) -> dict:
    return {"path": path.relative_to(model_dir).as_posix(), "sha256": sha256_of(path), "bytes": size_of(path)}


def size_of(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def sha256_of(path: Path) -> str:
    """A file's SHA-256; for a folder (a Core ML .mlpackage), the SHA-256 of the lines
    "<sha256 of file>  <path relative to the folder>" for every file in it, sorted by path."""
    if path.is_dir():
        lines = "".join(f"{sha256_of(file)}  {file.relative_to(path).as_posix()}\n"
                        for file in sorted(p for p in path.rglob("*") if p.is_file()))
        return hashlib.sha256(lines.encode("utf-8")).hexdigest()
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomically(path: Path, content: dict) -> None:
    """Readers never see half a manifest."""
    def dump(temporary: Path) -> None:
        temporary.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")

    write_atomically(path, dump)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """`write(temporary)` for a temporary file next to `path`, flushed to disk, then renamed over `path`: a
    reader, or the next run after a killed one, sees the old file or the whole new one, never half of it.
    The temporary name starts with "." + the file name, and keeps its suffix (np.save would add one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


# ---- the one reader -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRecord:
    path: str  # relative to the model folder
    sha256: str
    bytes: int


@dataclass(frozen=True)
class ManifestArtifact:
    """One artifact as the manifest records it."""

    path: str  # its main file, relative to the model folder
    runtime: str
    precision: str
    platform: str  # the manifest's "target": where it ships
    files: tuple[FileRecord, ...]  # the main file first, then companions (ncnn's .bin)
    parity: dict
    details: dict
    reproducible: bool | None

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"

    @property
    def conversion(self) -> ConversionRecord | None:
        return conversion_of(self.details)

    @property
    def name(self) -> str:
        return Path(self.path).name

    def artifact(self, model_dir: Path) -> Artifact:
        """The artifact with its files' absolute paths, ready for its target's load()."""
        paths = [model_dir / record.path for record in self.files] or [model_dir / self.path]
        return Artifact(paths[0], self.runtime, self.precision, tuple(paths[1:]), self.details)


@dataclass(frozen=True)
class ExportManifest:
    """A model folder's manifest.json, read once and checked: every reader of manifests goes through this."""

    folder: Path
    model_name: str
    input: dict  # the input contract as recorded, plus the input tensor's "name"
    output: dict  # {"name", "shape"}
    labels: dict | None  # {"path", "count"}
    data: dict  # where calibration and validation photos came from
    artifacts: tuple[ManifestArtifact, ...]
    raw: dict  # the whole document, for the report that renders it
    # SHA-256 per input every artifact was made from (exporter/cache.py MADE_FROM); None before schema 2
    made_from: dict | None = None
    failed_targets: tuple[dict, ...] = ()  # {"target", "exit_code", "error", "hint", "kept"}

    @property
    def input_name(self) -> str:
        return self.input.get("name", "input")

    @property
    def output_name(self) -> str:
        return self.output.get("name", "output")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.input["input_shape"])

    def contract(self) -> InputContract:
        spec = self.input
        return InputContract(tuple(spec["input_shape"]), tuple(spec["mean"]), tuple(spec["std"]), spec["color"],
                             float(spec["pixel_scale"]))

    def snippet_contract(self) -> SnippetContract:
        spec = self.input
        _, channels, height, width = spec["input_shape"]
        return SnippetContract(self.input_name, channels, height, width, spec["color"], float(spec["pixel_scale"]),
                               tuple(spec["mean"]), tuple(spec["std"]))

    def of_runtime(self, runtime: str) -> tuple[ManifestArtifact, ...]:
        return tuple(artifact for artifact in self.artifacts if artifact.runtime == runtime)


def read_manifest(model_dir: Path) -> ExportManifest:
    """The manifest of an export folder; InputError naming the fix when there is none or it is not ours."""
    path = Path(model_dir) / MANIFEST_NAME
    if not path.is_file():
        raise InputError(f"{model_dir} holds no {MANIFEST_NAME}: it is not an exported model folder",
                         hint="run mobile-export export first, then pass OUT/<model> (e.g. out/mobilenet_v2)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return ExportManifest(
            folder=Path(model_dir), model_name=raw["model"]["name"], input=dict(raw["input"]),
            output=dict(raw.get("output") or {}), labels=raw.get("labels"), data=dict(raw.get("data") or {}),
            artifacts=tuple(_artifact_entry(entry) for entry in raw["artifacts"]), raw=raw,
            made_from=dict(raw["made_from"]) if raw.get("made_from") is not None else None,
            failed_targets=tuple(dict(failure) for failure in raw.get("failed_targets") or ()),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise InputError(f"{path} is not a mobile-export manifest ({type(error).__name__}: {error})",
                         hint="re-run mobile-export export into that folder") from None


def _artifact_entry(entry: dict) -> ManifestArtifact:
    return ManifestArtifact(
        path=entry["path"], runtime=entry["runtime"], precision=entry["precision"], platform=entry["target"],
        files=tuple(FileRecord(f["path"], f["sha256"], int(f["bytes"])) for f in entry["files"]),
        parity=dict(entry.get("parity") or {}), details=dict(entry.get("details") or {}),
        reproducible=entry.get("reproducible"),
    )
