"""The export spec: defaults, then export.toml, then command-line flags, each overriding the last."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from core.contract import InputContract
from core.errors import InputError
from core.parity import DEFAULT_THRESHOLDS, ParityThresholds
from targets import get_target, target_groups

DEFAULT_MODEL = "zoo:mobilenet_v2"
DEFAULT_INPUT_SHAPE = (1, 3, 224, 224)
DEFAULT_TARGET = "android"
# Which runtimes make up each --target, and which platform their artifacts ship to: from the target registry
# (read when asked, so a runtime registered later, as the toy one in the tests, is a --target too).
TARGET_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = target_groups()


@dataclass(frozen=True)
class ExportSpec:
    model: str
    contract: InputContract
    target: str = DEFAULT_TARGET
    out: Path = Path("out")
    weights: str | None = None
    trust_pickle: bool = False
    calib: str = "builtin"
    val: str | None = None
    labels: Path | None = None
    int8_io: bool = False
    pure_int8: bool = False  # no float fallback: every op of the int8 TFLite model stays integer
    coreml_palettize: bool = False  # also build a 6-bit palettized Core ML package
    coreml_w8a8: bool = False  # also build a Core ML package with 8-bit activations (iOS 17+)
    rebuild: bool = False  # convert every target even when the previous export's artifacts could be reused
    calibration_samples: int = 120
    timeout_s: float = 1800.0
    thresholds: dict[str, ParityThresholds] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    output_kinds: dict[str, str] = field(default_factory=dict)  # [outputs.NAME] kind = ... (core/output_kinds.py)

    @property
    def platform(self) -> str:
        return target_groups()[self.target][0]

    @property
    def target_names(self) -> tuple[str, ...]:
        return target_groups()[self.target][1]

    def platform_of(self, target_name: str) -> str:
        """The platform a runtime's artifacts ship to, whatever group asked for them; the export's own for
        the interchange ONNX model, which ships everywhere."""
        platforms = get_target(target_name).platforms
        return platforms[0] if platforms else self.platform


# Flags and config keys that are plain values; the contract and thresholds are assembled separately.
SCALAR_KEYS = ("model", "target", "out", "weights", "trust_pickle", "calib", "val", "labels", "int8_io",
               "pure_int8", "coreml_palettize", "coreml_w8a8", "rebuild", "calibration_samples", "timeout_s")
CONTRACT_KEYS = ("input_shape", "mean", "std", "color", "pixel_scale")


def build_spec(flags: dict, config_path: Path | None = None) -> ExportSpec:
    """flags: values given on the command line (None = not given)."""
    config = _read_config(config_path) if config_path else {}
    base = config_path.parent if config_path else Path.cwd()
    merged = {**config, **{k: v for k, v in flags.items() if v is not None}}
    unknown = set(config) - set(SCALAR_KEYS) - set(CONTRACT_KEYS) - {"parity", "outputs"}
    if unknown:
        raise InputError(
            f"unknown keys in {config_path}: {', '.join(sorted(unknown))}",
            hint=f"known keys: {', '.join(SCALAR_KEYS + CONTRACT_KEYS)}, [parity.<precision>] and [outputs.<name>] tables",
        )
    for key in ("weights", "calib", "val", "labels", "out"):
        if key in config and key not in flags_given(flags) and merged.get(key) not in (None, "builtin"):
            merged[key] = str(base / merged[key]) if not Path(merged[key]).is_absolute() else merged[key]
    model = merged.get("model", DEFAULT_MODEL)
    if "model" in config and "model" not in flags_given(flags) and _looks_like_path(model):
        model = str(base / model)
    target = merged.get("target", DEFAULT_TARGET)
    groups = target_groups()
    if target not in groups:
        raise InputError(f"unknown target {target!r}", hint=f"choose one of: {', '.join(groups)}")
    merged = {**_zoo_defaults(model, merged), **merged}
    scalars = {k: merged[k] for k in SCALAR_KEYS if k in merged}
    scalars["model"], scalars["target"] = model, target
    for key in ("out", "labels"):
        if scalars.get(key) is not None:
            scalars[key] = Path(scalars[key])
    if "input_shape" not in merged:
        merged["input_shape"] = _default_input_shape(model)
    return ExportSpec(contract=_contract(merged), thresholds=_thresholds(config.get("parity", {})),
                      output_kinds={**_zoo_output_kinds(model), **_output_kinds(config.get("outputs", {}))},
                      **scalars)


def flags_given(flags: dict) -> set[str]:
    return {k for k, v in flags.items() if v is not None}


def _looks_like_path(model: str) -> bool:
    return not model.startswith(("zoo:", "python:"))


def _zoo_defaults(model: str, merged: dict) -> dict:
    """A zoo model without published weights is exported with its digit-trained ones (exporter/zoo/digits.py):
    at their input size, calibrated on training digits and checked on held-out ones; a zoo detector or
    segmenter with its own weights, on the digit scenes it was trained for (exporter/zoo/scenes.py). Unless
    given."""
    if not model.startswith("zoo:"):
        return {}
    from exporter.zoo import CLASSIFIER, ZOO, digits, scenes

    name = model.removeprefix("zoo:")
    if name in ZOO and ZOO[name].task != CLASSIFIER and merged.get("weights") is None:
        defaults = scenes.export_defaults()
    elif digits.uses_digit_weights(name, merged.get("weights")):
        defaults = digits.export_defaults(name)
    else:
        return {}
    if "calib" in merged or "val" in merged:  # the user's photos: their own split, as for any model
        del defaults["calib"], defaults["val"]
    return defaults


def _zoo_output_kinds(model: str) -> dict[str, str]:
    """The kinds of a zoo task model's outputs (the config's [outputs.NAME] override them)."""
    from exporter.zoo import ZOO

    entry = ZOO.get(model.removeprefix("zoo:")) if model.startswith("zoo:") else None
    return dict(entry.output_kinds) if entry else {}


def _default_input_shape(model: str) -> tuple[int, int, int, int]:
    """A zoo model's own resolution (MobileNetV1 comes at 128 to 224); 224 for everything else."""
    if model.startswith("zoo:"):
        from exporter.zoo import ZOO

        entry = ZOO.get(model.removeprefix("zoo:"))
        if entry is not None:
            return entry.input_shape
    return DEFAULT_INPUT_SHAPE


def _contract(merged: dict) -> InputContract:
    return InputContract(
        input_shape=tuple(int(v) for v in merged.get("input_shape", DEFAULT_INPUT_SHAPE)),
        mean=tuple(float(v) for v in merged.get("mean", (0.485, 0.456, 0.406))),
        std=tuple(float(v) for v in merged.get("std", (0.229, 0.224, 0.225))),
        color=merged.get("color", "rgb"),
        pixel_scale=float(merged.get("pixel_scale", 255.0)),
    )


def _thresholds(parity_table: dict) -> dict[str, ParityThresholds]:
    thresholds = dict(DEFAULT_THRESHOLDS)
    for precision, overrides in parity_table.items():
        if precision not in thresholds or not isinstance(overrides, dict):
            raise InputError(
                f"[parity.{precision}] is not a known precision table",
                hint="use [parity.fp32], [parity.fp16] or [parity.int8] with cosine, top1_agreement, "
                     "pixel_agreement, peak_agreement or box_iou keys",
            )
        try:
            thresholds[precision] = replace(thresholds[precision], **overrides)
        except TypeError:
            raise InputError(f"[parity.{precision}] has unknown keys {sorted(overrides)}",
                             hint="allowed keys: cosine, top1_agreement, pixel_agreement, peak_agreement, "
                                  "box_iou") from None
    return thresholds


def _output_kinds(outputs_table: dict) -> dict[str, str]:
    """[outputs.NAME] kind = "..." -> {NAME: kind}; whether NAME and kind fit the model is checked once the
    model's outputs are known (core/output_kinds.resolve_kinds)."""
    kinds = {}
    for name, table in outputs_table.items():
        if not isinstance(table, dict) or set(table) != {"kind"}:
            raise InputError(f"[outputs.{name}] must hold exactly one key, kind",
                             hint=f'e.g. [outputs.{name}] kind = "class_map"')
        kinds[name] = str(table["kind"])
    return kinds


def _read_config(path: Path) -> dict:
    if not path.is_file():
        raise InputError(f"config file {path} does not exist", hint="check the path given to --config")
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except tomllib.TOMLDecodeError as error:
        raise InputError(f"{path} is not valid TOML: {error}", hint="fix the syntax at the line shown") from None


def parse_number_list(text: str, what: str, cast=float) -> tuple:
    try:
        return tuple(cast(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise InputError(f"{what} {text!r} is not a comma-separated list of numbers",
                         hint=f"e.g. {what} " + ("1,3,224,224" if cast is int else "0.485,0.456,0.406")) from None
