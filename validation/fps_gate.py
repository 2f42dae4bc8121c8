"""The frame-rate gate: one row per profile x artifact, measured or projected, checked against a target FPS.

Rows come from three places and each says which it is (`kind`) and how it was obtained (`method`):
- profile "host": every artifact timed in its own runtime on this machine (validation/host_bench.py), measured;
- a device profile (validation/profiles.py): the cost model's figure for that device, projected;
- profile "adb:SERIAL": the runtime's own benchmark binary on a plugged-in device (validation/device_run.py),
  measured.

A projection is one number, a mean latency; a device benchmark binary prints a mean (benchncnn) or a mean and
a median (benchmark_model). Percentiles that were not observed stay None (null in JSON), never estimated.
`fps` is 1000 / p50 when a p50 was observed, else 1000 / mean; `fps_basis` says which.

A projected row also carries the 90 % interval of its latency (from held-out errors of projections like it,
validation/projection.py) and the chance of meeting the target. The gate is pessimistic: a projected row passes
only when the slow end of its interval meets the target, fails when even the fast end misses it, and is
"uncertain" in between; an uncertain row does not pass the gate. A measured row says pass or FAIL, and when the
device of a profile was measured (--device-profile), its measurements replace that profile's projections.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

from core.errors import GateFailed, InputError
from core.manifest import read_manifest, write_json_atomically
from core.target import NotOnThisHost
from targets import get_target, target_of_profile_runtime
from validation import host_bench
from validation.error_distribution import DEFAULT_LEVEL
from validation.profiles import DEFAULT_TARGET_FPS, DeviceProfile

BENCH_NAME = "bench.json"
BENCH_SCHEMA_VERSION = 1
HOST_PROFILE = "host"
ALL_PROFILES = "all"
# Platforms in the order a profile is assigned to one: a device running any iOS runtime is an iPhone, whatever
# else it runs (the iPhone profile projects ncnn as well as Core ML).
PLATFORM_PRECEDENCE = ("ios", "android")


@dataclass(frozen=True)
class ExportedArtifact:
    path: str  # relative to the model folder, as in the manifest
    runtime: str
    precision: str
    platform: str
    files: tuple[str, ...]  # the artifact's file first, then companions
    details: dict = field(default_factory=dict)  # the manifest's details (tensor names, ...)

    @property
    def label(self) -> str:
        return f"{self.runtime} {self.precision}"


@dataclass(frozen=True)
class ExportedModel:
    folder: Path
    name: str
    input_shape: tuple[int, ...]
    input_name: str
    output_name: str
    artifacts: tuple[ExportedArtifact, ...]

    def paths(self, artifact: ExportedArtifact) -> tuple[Path, ...]:
        return tuple(self.folder / name for name in artifact.files)

    @property
    def runtimes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.runtime for a in self.artifacts))

    @property
    def platforms(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(a.platform for a in self.artifacts))


def load_export(folder: Path, runtimes: tuple[str, ...] | None = None) -> ExportedModel:
    """The artifacts of `mobile-export export` in `folder`, optionally only those of the given runtimes."""
    manifest = read_manifest(Path(folder))
    artifacts = tuple(
        ExportedArtifact(path=entry.path, runtime=entry.runtime, precision=entry.precision, platform=entry.platform,
                         files=tuple(f.path for f in entry.files), details=entry.details)
        for entry in manifest.artifacts
        if runtimes is None or entry.runtime in runtimes
    )
    model = ExportedModel(Path(folder), manifest.model_name, manifest.input_shape, manifest.input_name,
                          manifest.output_name, artifacts)
    missing = [path for artifact in artifacts for path in model.paths(artifact) if not path.exists()]
    if missing:
        raise InputError(f"the manifest lists {missing[0].name}, which is not in {folder}",
                         hint="re-run mobile-export export; do not move files out of the model folder")
    if not artifacts:
        raise InputError(f"{folder} has no artifacts for {', '.join(runtimes or ())}",
                         hint="export that target first, or pick another --target")
    return model


@dataclass(frozen=True)
class Latency:
    """Milliseconds per frame. None means "not observed", never "zero"."""

    p50: float | None = None
    p90: float | None = None
    p99: float | None = None
    mean: float | None = None

    @property
    def basis(self) -> tuple[str, float]:
        """The figure FPS is computed from: the median when it was observed, else the mean."""
        if self.p50 is not None:
            return "p50", self.p50
        if self.mean is not None:
            return "mean", self.mean
        raise ValueError("a latency needs a p50 or a mean")

    def as_dict(self) -> dict:
        # Nanoseconds: a tiny model runs in 45 µs on a desktop, where 0.1 µs steps put the FPS next to it 0.2 % off.
        return {key: None if value is None else round(value, 6)
                for key, value in (("p50", self.p50), ("p90", self.p90), ("p99", self.p99), ("mean", self.mean))}


@dataclass(frozen=True)
class LatencyInterval:
    """Where a projected latency's measurement is expected: the central `level` interval and the chance of
    meeting the row's target, both from the held-out errors of projections like it."""

    level: float
    fast_ms: float
    slow_ms: float
    chance_of_target: float

    def as_dict(self) -> dict:
        return {"level": self.level, "fast_ms": round(self.fast_ms, 6), "slow_ms": round(self.slow_ms, 6),
                "chance_of_meeting_target": round(self.chance_of_target, 3)}


@dataclass(frozen=True)
class FpsRow:
    profile: str
    artifact: str
    runtime: str
    precision: str
    latency_ms: Latency
    kind: str  # "measured" | "projected"
    target_fps: float
    method: str  # how the figure was obtained, in one sentence
    gated: bool  # whether this row decides the exit code
    details: dict = field(default_factory=dict)
    interval: LatencyInterval | None = None  # projected rows only

    @property
    def fps(self) -> float:
        return 1000.0 / self.latency_ms.basis[1]

    @property
    def target_ms(self) -> float:
        return 1000.0 / self.target_fps

    @property
    def verdict(self) -> str:
        """"pass" | "FAIL" | "uncertain" (projected rows whose interval straddles the target)."""
        if self.interval is None:
            return "pass" if self.fps >= self.target_fps else "FAIL"
        if self.interval.slow_ms <= self.target_ms:
            return "pass"
        return "FAIL" if self.interval.fast_ms > self.target_ms else "uncertain"

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def as_dict(self) -> dict:
        return {
            "profile": self.profile, "artifact": self.artifact, "runtime": self.runtime, "precision": self.precision,
            "latency_ms": self.latency_ms.as_dict(), "fps": round(self.fps, 2), "fps_basis": self.latency_ms.basis[0],
            "kind": self.kind, "target_fps": self.target_fps, "verdict": self.verdict, "passed": self.passed,
            "gated": self.gated, "interval": None if self.interval is None else self.interval.as_dict(),
            "method": self.method, "details": self.details,
        }


@dataclass(frozen=True)
class GateReport:
    model: str
    host: dict
    rows: tuple[FpsRow, ...]
    not_measured: tuple[str, ...]  # artifacts or profiles left out, each with the reason

    @property
    def failed(self) -> tuple[FpsRow, ...]:
        return tuple(row for row in self.rows if row.gated and row.verdict == "FAIL")

    @property
    def uncertain(self) -> tuple[FpsRow, ...]:
        return tuple(row for row in self.rows if row.gated and row.verdict == "uncertain")

    @property
    def gated_profiles(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(row.profile for row in self.rows if row.gated))

    @property
    def passed(self) -> bool:
        return not self.failed and not self.uncertain

    def as_dict(self) -> dict:
        return {
            "schema_version": BENCH_SCHEMA_VERSION,
            "model": self.model,
            "host": self.host,
            "gated_profiles": list(self.gated_profiles),
            "passed": self.passed,
            "rows": [row.as_dict() for row in self.rows],
            "not_measured": list(self.not_measured),
        }


def write_report(report: GateReport, folder: Path) -> Path:
    path = folder / BENCH_NAME
    write_json_atomically(path, report.as_dict())
    return path


def check_gate(report: GateReport) -> None:
    """Raise GateFailed naming every gated row below its target, then every uncertain one."""
    if report.passed:
        return
    failures = [f"{row.profile} x {row.artifact} {row.fps:.1f} FPS < {row.target_fps:g}" for row in report.failed]
    uncertain = [f"{row.profile} x {row.artifact} {1000 / row.interval.slow_ms:.1f}-{1000 / row.interval.fast_ms:.1f} "
                 f"FPS ({row.interval.chance_of_target:.0%} chance of {row.target_fps:g})" for row in report.uncertain]
    parts = []
    if failures:
        parts.append(f"frame-rate gate failed for {len(failures)} row(s): {'; '.join(failures)}")
    if uncertain:
        parts.append(f"frame-rate gate uncertain for {len(uncertain)} projected row(s), whose interval straddles the "
                     f"target: {'; '.join(uncertain)}")
    hint = "use a lighter model, a smaller input or another precision; or change target_fps in the device profile"
    if uncertain:
        hint = ("measure on the device (--device adb:SERIAL --benchmark-binary PATH --device-profile NAME): a "
                "measured row replaces the projection; or narrow the projection with a profile fitted from a "
                "benchmark run of the device (mobile-export profiles fit); " + hint)
    raise GateFailed(". ".join(parts), hint=hint)


# ---- which profiles ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileSelection:
    devices: tuple[DeviceProfile, ...]  # projected (or measured on a device), and gated
    gate_host: bool
    skipped: tuple[str, ...]


def profile_runtime(runtime: str) -> str:
    """What device profiles call the runtime library of a manifest runtime."""
    return get_target(runtime).profile_runtime


def runs_any(profile: DeviceProfile, runtimes: tuple[str, ...]) -> bool:
    return any(profile_runtime(runtime) in profile.runtimes for runtime in runtimes)


def profile_platform(profile: DeviceProfile) -> str:
    """Profiles carry no platform key: the platform of the runtimes the device runs (PLATFORM_PRECEDENCE when
    they ship to several); Linux boards run what the manifest calls android artifacts."""
    shipping = [getattr(target_of_profile_runtime(name), "platforms", ()) for name in profile.runtimes]
    # a runtime that ships to several platforms (ExecuTorch) says nothing about which device this is
    served = {platform for platforms in shipping if len(platforms) == 1 for platform in platforms}
    return next((platform for platform in PLATFORM_PRECEDENCE if platform in served), PLATFORM_PRECEDENCE[-1])


def select_profiles(requested: str | None, profiles: dict[str, DeviceProfile], model: ExportedModel) -> ProfileSelection:
    """`None`: the profiles of the export's platforms (android artifacts -> Android phones and boards; ios ->
    iPhones) that run one of its runtimes; the host is shown, not gated. `all`: every profile that runs one of
    its runtimes. Otherwise a comma-separated list of names; `host` among them gates the host rows."""
    runtimes = model.runtimes
    if requested is None or requested.strip() == ALL_PROFILES:
        platforms = model.platforms if requested is None else ("android", "ios")
        usable = tuple(p for p in profiles.values() if runs_any(p, runtimes) and profile_platform(p) in platforms)
        skipped = tuple(f"profile {p.name}: runs {', '.join(p.runtimes)}, none of this export's runtimes"
                        for p in profiles.values() if requested is not None and p not in usable)
        return ProfileSelection(usable, gate_host=False, skipped=skipped)
    names = [name.strip() for name in requested.split(",") if name.strip()]
    unknown = [name for name in names if name != HOST_PROFILE and name not in profiles]
    if unknown or not names:
        raise InputError(f"unknown profile {', '.join(unknown) or repr(requested)}",
                         hint=f"choose from: {', '.join([HOST_PROFILE, ALL_PROFILES, *profiles])} "
                              "(mobile-export profiles lists them)")
    chosen = tuple(profiles[name] for name in names if name != HOST_PROFILE)
    for profile in chosen:
        if not runs_any(profile, runtimes):
            raise InputError(
                f"profile {profile.name} runs {', '.join(profile.runtimes)}; this export has {', '.join(runtimes)}",
                hint="export a target that device runs (e.g. --target android for ncnn/tflite), or pick another profile",
            )
    return ProfileSelection(chosen, gate_host=HOST_PROFILE in names, skipped=())


# ---- rows -------------------------------------------------------------------------------------------------


def host_row(artifact: ExportedArtifact, measurement, gated: bool, target_fps: float = DEFAULT_TARGET_FPS) -> FpsRow:
    method = (f"measured on this host in its own runtime, {measurement.threads} thread(s): warm-up, then timed runs "
              "until p50 and p90 settle or the time budget ends")
    details = measurement.as_dict()
    for key in ("runtime", "precision", "p50_ms", "p90_ms", "p99_ms", "mean_ms"):
        details.pop(key)
    return FpsRow(HOST_PROFILE, artifact.path, artifact.runtime, artifact.precision,
                  Latency(measurement.p50_ms, measurement.p90_ms, measurement.p99_ms, measurement.mean_ms),
                  "measured", target_fps, method, gated, _rounded(details))


def projected_row(profile: DeviceProfile, artifact: ExportedArtifact, projection) -> FpsRow:
    """`projection` is a validation.projection.Projection."""
    error = projection.error
    details = {"threads": profile.threads, "error_stratum": error.stratum, "held_out_pairs": error.pairs,
               "held_out_median_error_percent": error.median_abs_error_percent, "validation": projection.validation}
    fast, slow = projection.interval_ms
    interval = LatencyInterval(projection.level, fast, slow, projection.chance_of_meeting(profile.target_fps))
    return FpsRow(profile.name, artifact.path, artifact.runtime, artifact.precision, Latency(mean=projection.latency_ms),
                  "projected", profile.target_fps, projection.method, True, _rounded(details), interval)


def device_row(profile_name: str, artifact: ExportedArtifact, measurement, target_fps: float) -> FpsRow:
    return FpsRow(profile_name, artifact.path, artifact.runtime, artifact.precision,
                  Latency(p50=measurement.p50_ms, mean=measurement.mean_ms), "measured", target_fps,
                  measurement.method, True, _rounded(measurement.details))


def measured_beats_projected(rows: list[FpsRow]) -> list[FpsRow]:
    """A projected row of a profile and artifact that was also measured on that profile's device is shown, not
    gated: the measurement decides."""
    measured = {(row.profile, row.artifact) for row in rows if row.kind == "measured"}
    return [replace(row, gated=False, details={**row.details, "superseded_by": "measured on the device"})
            if row.kind == "projected" and (row.profile, row.artifact) in measured else row for row in rows]


def _rounded(details: dict) -> dict:
    return {key: round(value, 3) if isinstance(value, float) else value for key, value in details.items()}


# ---- the whole run ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchPlan:
    selection: ProfileSelection
    measure_host: bool
    host_threads: int
    rule: host_bench.StoppingRule
    device_serial: str | None = None
    benchmark_binaries: tuple[Path, ...] = ()
    device_threads: int = 4
    device_profile: DeviceProfile | None = None  # the profile whose device is plugged in (its rows are measured)
    interval_level: float = DEFAULT_LEVEL  # of the projected rows' intervals, whose slow end the gate checks


def run_bench(model: ExportedModel, plan: BenchPlan, stage: Callable) -> GateReport:
    """Host measurements, then projections, then the device run. `stage(name)` is a progress context
    (StageClock.stage). What cannot be measured here is listed in the report's `not_measured`, with why."""
    host = host_bench.host_info()  # before our own runs load the machine
    rows: list[FpsRow] = []
    skipped: list[str] = list(plan.selection.skipped)
    if plan.measure_host:
        for artifact in model.artifacts:
            reason = get_target(artifact.runtime).why_not_timed_here()
            if reason is not None:
                skipped.append(f"host: {artifact.path}: {reason}")
                continue
            with stage(f"time {artifact.label} on this host"):
                measurement = measure_artifact_on_host(model, artifact, plan.host_threads, plan.rule)
            rows.append(host_row(artifact, measurement, plan.selection.gate_host))
    rows += _projected_rows(model, plan.selection.devices, plan.interval_level)
    if plan.device_serial is not None:
        rows += _device_rows(model, plan, stage)
    return GateReport(model.name, host, tuple(measured_beats_projected(rows)), tuple(skipped))


def measure_artifact_on_host(model: ExportedModel, artifact: ExportedArtifact, threads: int,
                             rule: host_bench.StoppingRule) -> host_bench.HostMeasurement:
    """One artifact of the export timed in its runtime here; runtime chatter goes to OUT/<model>/logs/bench.log.
    NotOnThisHost, before anything starts, for a runtime this machine cannot run."""
    reason = get_target(artifact.runtime).why_not_timed_here()
    if reason is not None:
        raise NotOnThisHost(reason)
    request = host_bench.MeasureRequest(artifact.runtime, artifact.precision,
                                        tuple(str(path) for path in model.paths(artifact)), model.input_shape,
                                        artifact.details, threads, rule)
    return host_bench.measure_on_host(request, model.folder / "logs" / "bench.log")


def _projected_rows(model: ExportedModel, profiles: tuple[DeviceProfile, ...], level: float) -> list[FpsRow]:
    from validation.projection import project_latency

    rows = []
    for profile in profiles:
        for artifact in model.artifacts:
            if profile_runtime(artifact.runtime) not in profile.runtimes:
                continue
            projection = project_latency(profile, model.folder / artifact.path, artifact.precision, level)
            rows.append(projected_row(profile, artifact, projection))
    return rows


def _device_rows(model: ExportedModel, plan: BenchPlan, stage: Callable) -> list[FpsRow]:
    from validation.device_run import run_on_device

    with stage(f"run the benchmark binaries on adb:{plan.device_serial}"):
        measurements = run_on_device(plan.device_serial, plan.benchmark_binaries, model, plan.device_threads)
    by_path = {artifact.path: artifact for artifact in model.artifacts}
    profile = plan.device_profile
    name, target = (profile.name, profile.target_fps) if profile else (f"adb:{plan.device_serial}", DEFAULT_TARGET_FPS)
    return [device_row(name, by_path[m.artifact], m, target) for m in measurements]


# ---- the printed table ------------------------------------------------------------------------------------


def table_lines(report: GateReport) -> list[str]:
    level = next((row.interval.level for row in report.rows if row.interval is not None), DEFAULT_LEVEL)
    header = (f"{'profile':<20} {'artifact':<32} {'latency ms':<26} {f'{level:.0%} interval ms':<17} {'FPS':>7} "
              f"{'chance':>6} {'kind':<9} {'target':>6}  gate")
    lines = [f"\nFrame rate of {report.model}", header, "-" * len(header)]
    for row in report.rows:
        interval = "" if row.interval is None else f"{row.interval.fast_ms:.2f}-{row.interval.slow_ms:.2f}"
        chance = "" if row.interval is None else _chance_text(row.interval.chance_of_target)
        verdict = row.verdict if row.gated else f"({row.verdict.lower()})"
        lines.append(f"{row.profile:<20} {row.artifact:<32} {_latency_text(row.latency_ms):<26} {interval:<17} "
                     f"{row.fps:>7.1f} {chance:>6} {row.kind:<9} {row.target_fps:>6g}  {verdict}")
    if any(not row.gated for row in report.rows):
        lines.append("(verdict): shown, not gated: the host is not a target device (--profile host gates it), or the "
                     "profile's device was measured and the measurement decides")
    lines.append("latency: p50 / p90 / p99 where observed; '~X mean' is a single mean figure (projections, benchncnn)")
    if any(row.interval is not None for row in report.rows):
        lines.append(f"{level:.0%} interval: where the measurement of a projected row is expected, from held-out "
                     "errors of projections like it; chance: of meeting the target. A projected row passes only when the slow "
                     "end of its interval meets the target, FAILs when the fast end misses it, else is uncertain")
    lines += _method_lines(report.rows)
    lines += host_detail_lines(report.rows)
    host = report.host
    if any(row.profile == HOST_PROFILE for row in report.rows):
        lines.append(f"host: {host['cpu']}, {host['logical_cores']} logical cores, load {host['load_average_1min']}"
                     f"; runtimes {', '.join(f'{k} {v}' for k, v in host['runtimes'].items())}")
        if host.get("busy"):
            lines.append("note: the host was busy (load average above its core count): host figures are pessimistic")
    lines += [f"not measured: {line}" for line in report.not_measured]
    if not report.gated_profiles:
        lines.append("gate: no row is gated (name profiles with --profile, or --profile host for this machine)")
    else:
        lines.append(f"gate ({', '.join(report.gated_profiles)}): {_gate_words(report)}")
    return lines


def _gate_words(report: GateReport) -> str:
    if report.passed:
        return "PASSED"
    words = []
    if report.failed:
        words.append(f"FAILED ({len(report.failed)} row(s))")
    if report.uncertain:
        words.append(f"UNCERTAIN ({len(report.uncertain)} projected row(s) straddle the target: measure them)")
    return ", ".join(words)


def _chance_text(chance: float) -> str:
    if chance >= 0.99:
        return ">99%"
    return "<1%" if chance <= 0.01 else f"{chance:.0%}"


def host_detail_lines(rows: tuple[FpsRow, ...]) -> list[str]:
    """Runs, settling, peak memory and runtime settings of each host measurement."""
    host_rows = [row for row in rows if row.profile == HOST_PROFILE]
    if not host_rows:
        return []
    lines = [f"{'host measurement':<32} {'runs':>5} {'settled':>7} {'peak RSS MB':>11} {'model MB':>8}  settings"]
    for row in host_rows:
        d = row.details
        settings = ", ".join(f"{key}={value}" for key, value in d["settings"].items())
        lines.append(f"{row.artifact:<32} {d['runs']:>5} {'yes' if d['stable'] else 'no':>7} "
                     f"{d['peak_rss_mb']:>11.1f} {d['model_peak_mb']:>8.1f}  {settings}")
    lines.append("peak RSS: the measuring process's peak resident memory (Python + runtime + model); "
                 "model MB: what loading and running the artifact added to it")
    return lines


def _latency_text(latency: Latency) -> str:
    if latency.p50 is not None and latency.p90 is not None:
        return f"{latency.p50:.2f} / {latency.p90:.2f} / {latency.p99:.2f}"
    basis, value = latency.basis
    return f"{value:.2f} ({basis})" if basis == "p50" else f"~{value:.2f} mean"


def _method_lines(rows: tuple[FpsRow, ...]) -> list[str]:
    """How each profile's figures were obtained: its shortest method (the one every row shares; some rows
    add a note about their artifact, which bench.json and --json keep per row)."""
    methods: dict[str, list[str]] = {}
    for row in rows:
        methods.setdefault(row.profile, []).append(row.method)
    lines = []
    for profile, texts in methods.items():
        extra = " (+ per-artifact notes in bench.json)" if len(set(texts)) > 1 else ""
        lines.append(f"how obtained [{profile}]: {min(texts, key=len)}{extra}")
    return lines
