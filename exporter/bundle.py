"""OUT/<model>/bundle.zip: what an app team needs to ship the model, checked and reproducible.

The artifacts listed in the manifest (each verified against its recorded SHA-256 first), labels, the input
contract as JSON, the manifest, the report, and integration snippets written from this export's own numbers:
each runtime's own (targets/<runtime>/snippet.py: LiteRT in Kotlin, ncnn in C++, Core ML in Swift). Entries are sorted and carry a fixed
timestamp and mode, so the same export always zips to the same bytes.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

from core.errors import InputError
from core.manifest import MANIFEST_NAME, ExportManifest, ManifestArtifact, read_manifest, sha256_of, write_atomically
from targets import ALL_TARGETS, REGISTRY, get_target, target_groups

BUNDLE_NAME = "bundle.zip"
CONTRACT_NAME = "input_contract.json"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
FILE_MODE = 0o644 << 16
# The artifact the snippets load, best first: smallest that still passed its parity gate.
SNIPPET_PREFERENCE = ("int8", "fp16", "fp32")


def write_report_and_bundle(model_dir: Path) -> tuple[Path, Path, Path]:
    """report.html, report.md and bundle.zip (which includes the report) for an export folder."""
    from validation.html_report import write_reports

    html_path, md_path = write_reports(model_dir)
    return html_path, md_path, write_bundle(model_dir)


def write_bundle(model_dir: Path) -> Path:
    manifest = read_manifest(model_dir)
    entries = dict(_artifact_entries(model_dir, manifest))
    labels = (manifest.labels or {}).get("path")
    if labels and _inside(model_dir, labels).is_file():
        entries[labels] = (model_dir / labels).read_bytes()
    entries[MANIFEST_NAME] = (model_dir / MANIFEST_NAME).read_bytes()
    entries[CONTRACT_NAME] = (json.dumps(contract_json(manifest), indent=2) + "\n").encode("utf-8")
    for name in ("report.html", "report.md"):
        if (model_dir / name).is_file():
            entries[name] = (model_dir / name).read_bytes()
    entries.update({name: text.encode("utf-8") for name, text in snippets(model_dir, manifest).items()})
    path = model_dir / BUNDLE_NAME
    _write_zip_atomically(path, entries)
    return path


def contract_json(manifest: ExportManifest) -> dict:
    return {
        **manifest.input,
        "output": manifest.output,  # the first output; "outputs" lists every one, in the model's order
        "outputs": manifest.raw.get("outputs") or [manifest.output],
        "channel_order": list(manifest.snippet_contract().channel_order),
        "resize": "resize the short side to size / 0.875, then take the center crop (how the photos were checked)",
        "per_artifact": {artifact.name: _artifact_io(artifact) for artifact in manifest.artifacts},
    }


def _artifact_io(artifact: ManifestArtifact) -> dict:
    keys = ("layout", "input", "output", "outputs", "input_blob", "output_blob", "output_blobs", "output_name",
            "input_name")
    return {"runtime": artifact.runtime, "precision": artifact.precision,
            **{key: artifact.details[key] for key in keys if key in artifact.details}}


def _artifact_entries(model_dir: Path, manifest: ExportManifest):
    """(name in the zip, bytes) for every artifact file, after checking it is the file the export wrote."""
    for artifact in manifest.artifacts:
        for record in artifact.files:
            path = _inside(model_dir, record.path)
            if not path.exists():
                raise InputError(f"{record.path} is listed in the manifest but missing",
                                 hint="re-run the export to rebuild the model folder")
            if sha256_of(path) != record.sha256:
                raise InputError(
                    f"{record.path} changed since the export (its SHA-256 no longer matches the manifest)",
                    hint="re-run the export: a bundle ships only artifacts whose parity was checked",
                )
            if path.is_dir():  # a Core ML .mlpackage
                for file in sorted(p for p in path.rglob("*") if p.is_file()):
                    yield f"{record.path}/{file.relative_to(path).as_posix()}", file.read_bytes()
            else:
                yield record.path, path.read_bytes()


def _inside(model_dir: Path, relative: str) -> Path:
    """model_dir / relative, refused when the manifest's path leads out of the folder: a bundle ships the
    export, never another file of the machine (and its zip entry names stay relative)."""
    path = model_dir / relative
    if Path(relative).is_absolute() or not path.resolve().is_relative_to(model_dir.resolve()):
        raise InputError(f"the manifest lists {relative!r}, outside {model_dir}",
                         hint="the manifest was edited by hand: re-run the export to rebuild the model folder")
    return path


def _write_zip_atomically(path: Path, entries: dict[str, bytes]) -> None:
    def write_zip(temporary: Path) -> None:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for name in sorted(entries):
                info = zipfile.ZipInfo(name, date_time=FIXED_TIME)
                info.external_attr = FILE_MODE
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, entries[name])

    write_atomically(path, write_zip)


# ---- integration snippets -------------------------------------------------------------------------------


def snippets(model_dir: Path, manifest: ExportManifest) -> dict[str, str]:
    """{path in the zip: source text} for each runtime this export has, plus a README that lists them."""
    contract = manifest.snippet_contract()
    written = {}
    for target in REGISTRY.values():
        preferred = _preferred(manifest, target.name)
        if preferred is not None:
            written.update(target.snippets(contract, preferred, model_dir))
    written["README.md"] = _bundle_readme(manifest, written)
    return written


def _preferred(manifest: ExportManifest, runtime: str) -> dict | None:
    """The manifest entry of the runtime's artifact the snippet loads: SNIPPET_PREFERENCE among those that passed."""
    candidates = [a for a in manifest.raw["artifacts"] if a["runtime"] == runtime]
    ranked = sorted(candidates, key=lambda a: (not a["parity"]["passed"], _rank(a["precision"])))
    return ranked[0] if ranked else None


def _rank(precision: str) -> int:
    return SNIPPET_PREFERENCE.index(precision) if precision in SNIPPET_PREFERENCE else len(SNIPPET_PREFERENCE)


def _bundle_readme(manifest: ExportManifest, written: dict[str, str]) -> str:
    model = manifest.model_name
    lines = [f"# {model}: mobile bundle", "",
             "Made by `mobile-export report`. Every artifact here is the file the export checked for parity "
             "(SHA-256 verified against manifest.json when this zip was made).", "",
             f"- `{CONTRACT_NAME}`: the input contract (shape, layout, color order, pixel scale, mean, std) and each "
             "artifact's input/output tensors", "- `manifest.json`: checksums, parity, tool versions",
             "- `labels.txt`: class i is line i" if manifest.labels else "- no labels file in this export",
             "- `report.html` / `report.md`: parity, frame rate, op counts, sizes", ""]
    lines += [f"- `{name}`" for name in sorted(written)]
    runtimes = {artifact.runtime for artifact in manifest.artifacts}
    for platform, (_, names) in target_groups().items():
        if platform in names or platform == ALL_TARGETS or runtimes & set(names):
            continue
        shown = " or ".join(get_target(name).display_name for name in names)
        lines.append(f"- no {shown} snippet: this export has no {shown} artifact (export with --target {platform})")
    lines.append("")
    lines += ["| artifact | runtime | precision | parity |", "|---|---|---|---|"]
    lines += [f"| {a.name} | {a.runtime} | {a.precision} | "
              f"{'pass' if a.parity['passed'] else 'FAIL'} (cosine {a.parity['cosine']:.6f}) |"
              for a in manifest.artifacts]
    return "\n".join(lines) + "\n"
