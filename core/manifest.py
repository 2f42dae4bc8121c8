"""The manifest: what was built, its checksums, its parity, and how to feed it. Written atomically."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from core.artifact import Artifact
from core.parity import ParityResult

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


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
