"""Device profiles: one TOML file per device, built in (`profiles/` at the repo root) or dropped in by users.

A profile says what the device is (cores, clocks, ISA features), how to run on it (threads, runtimes, the FPS
target) and which published measurements the latency projection is calibrated on. The file format is
documented in the README, section "Device profiles".
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from core.errors import InputError
from targets import profile_runtimes
from validation.error_distribution import QUANTILE_PROBABILITIES, ErrorDistribution

BUILTIN_PROFILES_DIR = Path(__file__).resolve().parents[1] / "profiles"
DEFAULT_TARGET_FPS = 30.0
# The runtime libraries profiles may name: those of the registered targets.
KNOWN_RUNTIMES = profile_runtimes()
POWERSAVE_MODES = {0: "all cores", 1: "little cores only", 2: "big cores only"}


@dataclass(frozen=True)
class CoreCluster:
    count: int
    core: str  # microarchitecture, e.g. "Cortex-A76"
    ghz: float


@dataclass(frozen=True)
class Calibration:
    """What the projection of this device is calibrated on. Three kinds:

    - own runs: `device` is the exact device string of the published benchncnn runs
      (validation/device_data/results_cpu.csv) at `threads` and `powersave`;
    - a proxy: the profile's own device was never measured there, so a device with the same cores is used and
      `scale` (latency multiplier, proxy -> this device) carries the difference; `scale_basis` says how that
      number was derived. A proxy projection says so in its method;
    - a benchmark run (`mobile-export profiles fit`): `runs` holds the mean milliseconds benchncnn printed for
      each network on the user's device, `device` is the user's name for it, and `errors` the held-out error
      distributions measured for exactly those networks when the fit was made (leave one device out).
    """

    device: str
    threads: int
    powersave: int
    source: str
    scale: float = 1.0
    scale_basis: str = ""
    runs: tuple[tuple[str, float], ...] = ()  # benchmark run: (benchncnn network, mean ms)
    errors: tuple[ErrorDistribution, ...] = ()  # benchmark run: one per kind of network ("float", "int8", ...)
    validation: str = ""  # benchmark run: how `errors` were measured, one sentence
    fitted_without: tuple[str, ...] = ()  # devices of the data left out of the learned costs (to validate a fit)

    @property
    def is_proxy(self) -> bool:
        return bool(self.scale_basis) or self.scale != 1.0

    @property
    def is_benchmark_run(self) -> bool:
        return bool(self.runs)

    @property
    def kind(self) -> str:
        return "benchmark run" if self.is_benchmark_run else "proxy" if self.is_proxy else "own runs"


@dataclass(frozen=True)
class DeviceProfile:
    name: str  # the file's stem: what `--profile NAME` takes
    display_name: str
    soc: str
    cores: tuple[CoreCluster, ...]
    isa_features: tuple[str, ...]
    threads: int
    runtimes: tuple[str, ...]
    target_fps: float
    calibration: Calibration | None
    notes: str
    path: Path

    def as_dict(self) -> dict[str, Any]:
        calibration = self.calibration
        return {
            "name": self.name,
            "display_name": self.display_name,
            "soc": self.soc,
            "cores": [{"count": c.count, "core": c.core, "ghz": c.ghz} for c in self.cores],
            "isa_features": list(self.isa_features),
            "threads": self.threads,
            "runtimes": list(self.runtimes),
            "target_fps": self.target_fps,
            "calibration": None if calibration is None else {
                "device": calibration.device, "threads": calibration.threads, "powersave": calibration.powersave,
                "source": calibration.source, "scale": calibration.scale, "scale_basis": calibration.scale_basis,
                "proxy": calibration.is_proxy, "kind": calibration.kind, "runs": dict(calibration.runs),
            },
            "notes": self.notes,
            "path": str(self.path),
        }


def load_profiles(extra_dirs: Sequence[Path] = ()) -> dict[str, DeviceProfile]:
    """Every profile of the built-in folder, then of each extra folder; a later file of the same name wins."""
    profiles: dict[str, DeviceProfile] = {}
    for folder in (BUILTIN_PROFILES_DIR, *map(Path, extra_dirs)):
        if not folder.is_dir():
            raise InputError(f"profiles folder {folder} does not exist",
                             hint="pass a folder that holds <device>.toml files (see README, 'Device profiles')")
        for path in sorted(folder.glob("*.toml")):
            profile = load_profile(path)
            profiles[profile.name] = profile
    return profiles


def load_profile(path: Path) -> DeviceProfile:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InputError(f"profile {path}: cannot be read as TOML: {error}",
                         hint="fix the file's syntax (see README, 'Device profiles')") from error
    table = _Table(data, path, "")
    table.reject_unknown({"device", "threads", "runtimes", "target_fps", "calibration", "notes"})
    device = table.table("device")
    device.reject_unknown({"name", "soc", "cores", "isa_features"})
    calibration = table.optional_table("calibration")
    runtimes = tuple(table.string_list("runtimes"))
    unknown = [r for r in runtimes if r not in KNOWN_RUNTIMES]
    if unknown:
        table.fail("runtimes", f"unknown runtime(s) {unknown}; known: {list(KNOWN_RUNTIMES)}")
    return DeviceProfile(
        name=path.stem,
        display_name=device.string("name"),
        # optional: a profile fitted from a benchmark run may know its device only by the user's name for it
        soc=device.string("soc", ""),
        cores=tuple(_core_cluster(cluster) for cluster in device.table_list("cores", optional=True)),
        isa_features=tuple(device.string_list("isa_features", optional=True)),
        threads=table.positive_int("threads"),
        runtimes=runtimes,
        target_fps=table.positive_float("target_fps", DEFAULT_TARGET_FPS),
        calibration=None if calibration is None else _calibration(calibration),
        notes=table.string("notes", ""),
        path=path,
    )


def _core_cluster(table: "_Table") -> CoreCluster:
    table.reject_unknown({"count", "core", "ghz"})
    return CoreCluster(count=table.positive_int("count"), core=table.string("core"), ghz=table.positive_float("ghz"))


def _calibration(table: "_Table") -> Calibration:
    table.reject_unknown({"device", "threads", "powersave", "source", "scale", "scale_basis", "runs", "error",
                          "validation", "fitted_without"})
    powersave = table.integer("powersave", 0)
    if powersave not in POWERSAVE_MODES:
        table.fail("powersave", f"must be one of {sorted(POWERSAVE_MODES)} ({POWERSAVE_MODES})")
    scale = table.positive_float("scale", 1.0)
    scale_basis = table.string("scale_basis", "")
    if scale != 1.0 and not scale_basis:
        table.fail("scale_basis", "a proxy scale needs its derivation: say where the number comes from")
    runs = _runs(table)
    errors = _errors(table)
    if runs and not errors:
        table.fail("error", "is missing: [calibration.runs] needs the held-out errors its fit measured, "
                            "[calibration.error.*] (write the profile with mobile-export profiles fit)")
    if errors and not runs:
        table.fail("runs", "is missing: [calibration.error.*] belongs to a profile fitted from a benchmark run, "
                           "[calibration.runs] (write the profile with mobile-export profiles fit)")
    if runs and (scale != 1.0 or scale_basis):
        table.fail("scale", "does not apply to a profile fitted from its own benchmark run")
    return Calibration(device=table.string("device"), threads=table.positive_int("threads"), powersave=powersave,
                       source=table.string("source"), scale=scale, scale_basis=scale_basis, runs=runs,
                       errors=errors, validation=table.string("validation", ""),
                       fitted_without=tuple(table.string_list("fitted_without", optional=True)))


def _runs(table: "_Table") -> tuple[tuple[str, float], ...]:
    runs = table.optional_table("runs")
    if runs is None:
        return ()
    return tuple((network, runs.positive_float(network)) for network in runs.data)


def _errors(table: "_Table") -> tuple[ErrorDistribution, ...]:
    errors = table.optional_table("error")
    if errors is None:
        return ()
    result = []
    for kind in errors.data:
        entry = errors.table(kind)
        entry.reject_unknown({"stratum", "pairs", "median_abs_error_percent", "log_quantiles"})
        quantiles = entry.number_list("log_quantiles")
        if len(quantiles) != len(QUANTILE_PROBABILITIES) or quantiles != sorted(quantiles):
            entry.fail("log_quantiles", f"must be {len(QUANTILE_PROBABILITIES)} ascending numbers (the quantiles at "
                                        f"{list(QUANTILE_PROBABILITIES)})")
        result.append(ErrorDistribution(entry.string("stratum", kind), entry.positive_int("pairs"),
                                        tuple(quantiles), entry.positive_float("median_abs_error_percent")))
    return tuple(result)


_MISSING = object()


class _Table:
    """Typed access to one TOML table; every error names the file and the dotted key."""

    def __init__(self, data: dict[str, Any], path: Path, prefix: str):
        self.data, self.path, self.prefix = data, path, prefix

    def fail(self, key: str, problem: str) -> None:
        raise InputError(f"profile {self.path}: key '{self.prefix}{key}' {problem}",
                         hint="fix the key (the format is in README, 'Device profiles')")

    def reject_unknown(self, allowed: set[str]) -> None:
        """A misspelt key would otherwise fall back to its default without a word."""
        for key in self.data:
            if key not in allowed:
                self.fail(key, f"is not a profile key; expected one of {sorted(allowed)}")

    def _get(self, key: str, default: Any, kinds: tuple[type, ...], kind_name: str) -> Any:
        value = self.data.get(key, _MISSING)
        if value is _MISSING:
            if default is _MISSING:
                self.fail(key, "is missing")
            return default
        if isinstance(value, bool) or not isinstance(value, kinds):
            self.fail(key, f"must be {kind_name}, got {value!r}")
        return value

    def string(self, key: str, default: Any = _MISSING) -> str:
        value = self._get(key, default, (str,), "a string")
        if value is not default and not value.strip():
            self.fail(key, "must not be empty")
        return value

    def integer(self, key: str, default: Any = _MISSING) -> int:
        return self._get(key, default, (int,), "an integer")

    def positive_int(self, key: str, default: Any = _MISSING) -> int:
        value = self.integer(key, default)
        if value <= 0:
            self.fail(key, f"must be positive, got {value}")
        return value

    def positive_float(self, key: str, default: Any = _MISSING) -> float:
        value = float(self._get(key, default, (int, float), "a number"))
        if not value > 0:
            self.fail(key, f"must be positive, got {value}")
        return value

    def string_list(self, key: str, optional: bool = False) -> list[str]:
        value = self._get(key, [] if optional else _MISSING, (list,), "a list of strings")
        if (not value and not optional) or not all(isinstance(item, str) and item for item in value):
            self.fail(key, f"must be a non-empty list of strings, got {value!r}")
        return value

    def number_list(self, key: str) -> list[float]:
        value = self._get(key, _MISSING, (list,), "a list of numbers")
        if not value or not all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value):
            self.fail(key, f"must be a non-empty list of numbers, got {value!r}")
        return [float(item) for item in value]

    def table(self, key: str) -> "_Table":
        return _Table(self._get(key, _MISSING, (dict,), "a table"), self.path, f"{self.prefix}{key}.")

    def optional_table(self, key: str) -> "_Table | None":
        value = self._get(key, None, (dict,), "a table")
        return None if value is None else _Table(value, self.path, f"{self.prefix}{key}.")

    def table_list(self, key: str, optional: bool = False) -> list["_Table"]:
        value = self._get(key, [] if optional else _MISSING, (list,), "a list of tables")
        if (not value and not optional) or not all(isinstance(item, dict) for item in value):
            self.fail(key, "must be a non-empty array of tables ([[...]])")
        return [_Table(item, self.path, f"{self.prefix}{key}[{index}].") for index, item in enumerate(value)]
