"""What earlier exports left in the model folder: what of it an export keeps, and what it must not list as its own.

OUT/<model>/ holds one model, and its manifest lists every artifact in it. An export builds (or reuses,
exporter/cache.py) the targets it was asked for. The earlier artifacts of the other targets stay when they were
made from what this export makes its own from (cache.MADE_FROM: the ONNX graph, the input contract, the
calibration tensor, and the labels for runtimes that embed them) and their files still have the checksums the
manifest recorded: their parity is measured again and they are listed with the reuse key they were made under.

Anything else an earlier export left is a leftover: another model's artifacts, a file edited by hand, a file no
manifest lists. None is kept silently: the export refuses before converting, naming each and the fix, unless
--rebuild asks it to remove them (exporter/pipeline.py removes them while publishing, and says so).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from core.artifact import Artifact
from core.errors import InputError
from core.manifest import MANIFEST_NAME, ExportManifest, ManifestArtifact, read_manifest
from exporter.bundle import BUNDLE_NAME
from exporter.cache import MADE_FROM, files_intact, with_conversion_record
from exporter.publish import LABELS_NAME, LOGS_FOLDER
from targets import REGISTRY
from validation.fps_gate import BENCH_NAME
from validation.html_report import EXPLAIN_SUFFIX, PLOTS_FOLDER, REPORT_HTML, REPORT_MD

# What the commands write into a model folder besides artifacts: never an artifact, never a leftover. Names
# starting with "." (the lock, staging, half-written temporaries) are the export's own work files.
FOLDER_RECORDS = frozenset({MANIFEST_NAME, LABELS_NAME, LOGS_FOLDER, REPORT_HTML, REPORT_MD, PLOTS_FOLDER,
                            BUNDLE_NAME, BENCH_NAME})
EXPLAIN_ENDINGS = (EXPLAIN_SUFFIX, ".explain.png")  # `explain` saves its plot beside its JSON
UNLISTED = "no manifest lists it (left by an older mobile-export, or put there by hand)"
EARLIER_SCHEMA = "its export did not record what it was made from (a manifest older than schema 2)"
EDITED = "changed since the export that measured it (its SHA-256 no longer matches the manifest)"


@dataclass(frozen=True)
class Leftover:
    """Something in the folder the new manifest will not list, and why: it stops the export, or goes."""

    what: str  # "tflite int8 (my_mod_int8.tflite)", or a file's name
    why: str
    paths: tuple[str, ...]  # its entries still in the folder; () when they are all gone

    def line(self) -> str:
        return f"{self.what}: {self.why}"


@dataclass(frozen=True)
class EarlierExport:
    """What the folder holds from earlier exports, sorted for an export that builds some targets."""

    kept: tuple[ManifestArtifact, ...] = ()  # other targets' artifacts, listed again after a new parity run
    failures: tuple[dict, ...] = ()  # earlier failed targets this export does not try again, as the manifest lists them
    leftovers: tuple[Leftover, ...] = ()
    owners: dict[str, str] = dataclasses.field(default_factory=dict)  # folder entry -> runtime of its artifact

    def kept_runtimes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(artifact.runtime for artifact in self.kept))

    def kept_of(self, runtime: str) -> tuple[ManifestArtifact, ...]:
        return tuple(artifact for artifact in self.kept if artifact.runtime == runtime)

    def why_removed(self, entry: str, failed_targets: set[str]) -> str:
        """Why publishing takes `entry` out of the folder (it is in no artifact this export lists)."""
        leftover = next((leftover for leftover in self.leftovers if entry in leftover.paths), None)
        if leftover is not None:
            return leftover.why
        runtime = self.owners.get(entry)
        if runtime in failed_targets:
            return f"its target {runtime} failed in this export (the manifest's failed_targets says why)"
        return f"this export built {runtime} again and made no such file" if runtime else UNLISTED


def survey(model_dir: Path, made_from: dict[str, str], asked: tuple[str, ...]) -> EarlierExport:
    """What the folder holds from earlier exports, for an export that builds the runtimes `asked`."""
    manifest = _earlier_manifest(model_dir)
    artifacts = manifest.artifacts if manifest is not None else ()
    owners = {_entry(record.path): artifact.runtime for artifact in artifacts for record in artifact.files}
    present = {entry.name for entry in artifact_entries(model_dir)}
    leftovers = [Leftover(name, UNLISTED, (name,)) for name in sorted(present - set(owners))]
    kept = []
    for artifact in artifacts:
        if artifact.runtime in asked:
            continue  # this export replaces them
        why = _why_not_kept(model_dir, manifest, artifact, made_from)
        if why is None:
            kept.append(artifact)
        else:
            entries = tuple(dict.fromkeys(_entry(r.path) for r in artifact.files if _entry(r.path) in present))
            leftovers.append(Leftover(f"{artifact.label} ({artifact.name})", why, entries))
    return EarlierExport(tuple(kept), _failures_still_standing(manifest, made_from, asked), tuple(leftovers), owners)


def refuse_leftovers(model_dir: Path, earlier: EarlierExport) -> None:
    """InputError naming every leftover still in the folder, and the fix."""
    in_folder = [leftover for leftover in earlier.leftovers if leftover.paths]
    if not in_folder:
        return
    lines = "\n".join(f"  {leftover.line()}" for leftover in in_folder)
    raise InputError(
        f"{model_dir} holds artifacts this export can neither keep nor list as its own:\n{lines}",
        hint="pass --rebuild to remove them (the export says which), export them again with a --target that "
             "includes their runtime, or pass another --out",
    )


def kept_artifact(entry: ManifestArtifact, model_dir: Path) -> Artifact:
    """A kept manifest entry as an artifact in place, its conversion record saying it was kept."""
    return with_conversion_record(entry.artifact(model_dir),
                                  dataclasses.replace(entry.conversion, reused=True, kept=True))


def artifact_entries(model_dir: Path) -> list[Path]:
    """The folder's entries that are artifacts (or claim to be): all but its records, reports and work files."""
    return sorted(entry for entry in model_dir.iterdir()
                  if not entry.name.startswith(".") and entry.name not in FOLDER_RECORDS
                  and not entry.name.endswith(EXPLAIN_ENDINGS))


def _earlier_manifest(model_dir: Path) -> ExportManifest | None:
    try:
        return read_manifest(model_dir)
    except InputError:
        return None  # no earlier export, or a manifest that is not ours: its files count as unlisted


def _why_not_kept(model_dir: Path, manifest: ExportManifest, artifact: ManifestArtifact,
                  made_from: dict[str, str]) -> str | None:
    if manifest.made_from is None or artifact.conversion is None:
        return EARLIER_SCHEMA
    if artifact.runtime not in REGISTRY:
        return f"this mobile-export has no runtime {artifact.runtime!r}"
    differences = _differences(manifest.made_from, made_from, REGISTRY[artifact.runtime].embeds_labels)
    if differences:
        return "made from " + " and ".join(differences)
    missing = [record.path for record in artifact.files if not (model_dir / record.path).exists()]
    if missing:
        return f"{', '.join(missing)} is gone"
    return None if files_intact(model_dir, artifact) else EDITED


def _differences(earlier: dict, made_from: dict[str, str], embeds_labels: bool) -> list[str]:
    return [made.other for name, made in MADE_FROM.items()
            if (embeds_labels or not made.embedded_only) and earlier.get(name) != made_from[name]]


def _failures_still_standing(manifest: ExportManifest | None, made_from: dict[str, str],
                             asked: tuple[str, ...]) -> tuple[dict, ...]:
    """An earlier failed target of the same model stays failed until an export asks for it again."""
    if manifest is None or manifest.made_from is None or _differences(manifest.made_from, made_from, False):
        return ()
    return tuple({**failure, "kept": True} for failure in manifest.failed_targets if failure.get("target") not in asked)


def _entry(relative: str) -> str:
    """The folder entry a manifest path lives in (an .mlpackage is a folder)."""
    return Path(relative).parts[0]
