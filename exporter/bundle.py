"""OUT/<model>/bundle.zip: what an app team needs to ship the model, checked and reproducible.

The artifacts listed in the manifest (each verified against its recorded SHA-256 first), labels, the input
contract as JSON, the manifest, the report, and integration snippets written from this export's own numbers:
Android (LiteRT in Kotlin, ncnn in C++) and iOS (Core ML in Swift). Entries are sorted and carry a fixed
timestamp and mode, so the same export always zips to the same bytes.
"""
from __future__ import annotations

import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from core.errors import InputError
from core.manifest import MANIFEST_NAME, sha256_of, write_atomically

BUNDLE_NAME = "bundle.zip"
CONTRACT_NAME = "input_contract.json"
FIXED_TIME = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
FILE_MODE = 0o644 << 16
# The artifact the snippets load, best first: smallest that still passed its parity gate.
SNIPPET_PREFERENCE = ("int8", "fp16", "fp32")


@dataclass(frozen=True)
class Contract:
    """The manifest's input contract with the numbers each runtime's preprocessing API wants."""

    input_name: str
    channels: int
    height: int
    width: int
    color: str  # rgb | bgr
    pixel_scale: float
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_manifest(cls, manifest: dict) -> "Contract":
        spec = manifest["input"]
        _, channels, height, width = spec["input_shape"]
        return cls(spec.get("name", "input"), channels, height, width, spec["color"], float(spec["pixel_scale"]),
                   tuple(spec["mean"]), tuple(spec["std"]))

    @property
    def channel_order(self) -> tuple[str, ...]:
        """Which pixel component feeds each input channel, in order."""
        if self.channels == 1:
            return ("gray",)
        return ("r", "g", "b") if self.color == "rgb" else ("b", "g", "r")

    @property
    def ncnn_mean(self) -> tuple[float, ...]:
        """ncnn computes (pixel - mean) * norm on 0-255 pixels."""
        return tuple(m * self.pixel_scale for m in self.mean)

    @property
    def ncnn_norm(self) -> tuple[float, ...]:
        return tuple(1.0 / (s * self.pixel_scale) for s in self.std)


def write_report_and_bundle(model_dir: Path) -> tuple[Path, Path, Path]:
    """report.html, report.md and bundle.zip (which includes the report) for an export folder."""
    from validation.html_report import write_reports

    html_path, md_path = write_reports(model_dir)
    return html_path, md_path, write_bundle(model_dir)


def write_bundle(model_dir: Path) -> Path:
    from validation.explain import read_manifest

    manifest = read_manifest(model_dir)
    entries = dict(_artifact_entries(model_dir, manifest))
    labels = (manifest.get("labels") or {}).get("path")
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


def contract_json(manifest: dict) -> dict:
    contract = Contract.from_manifest(manifest)
    return {
        **manifest["input"],
        "output": manifest["output"],
        "channel_order": list(contract.channel_order),
        "resize": "resize the short side to size / 0.875, then take the center crop (how the photos were checked)",
        "per_artifact": {
            Path(a["path"]).name: _artifact_io(a) for a in manifest["artifacts"]
        },
    }


def _artifact_io(artifact: dict) -> dict:
    details = artifact.get("details", {})
    keys = ("layout", "input", "output", "input_blob", "output_blob", "output_name", "input_name")
    return {"runtime": artifact["runtime"], "precision": artifact["precision"],
            **{key: details[key] for key in keys if key in details}}


def _artifact_entries(model_dir: Path, manifest: dict):
    """(name in the zip, bytes) for every artifact file, after checking it is the file the export wrote."""
    for artifact in manifest["artifacts"]:
        for record in artifact["files"]:
            path = _inside(model_dir, record["path"])
            if not path.exists():
                raise InputError(f"{record['path']} is listed in the manifest but missing",
                                 hint="re-run the export to rebuild the model folder")
            if sha256_of(path) != record["sha256"]:
                raise InputError(
                    f"{record['path']} changed since the export (its SHA-256 no longer matches the manifest)",
                    hint="re-run the export: a bundle ships only artifacts whose parity was checked",
                )
            if path.is_dir():  # a Core ML .mlpackage
                for file in sorted(p for p in path.rglob("*") if p.is_file()):
                    yield f"{record['path']}/{file.relative_to(path).as_posix()}", file.read_bytes()
            else:
                yield record["path"], path.read_bytes()


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


def snippets(model_dir: Path, manifest: dict) -> dict[str, str]:
    """{path in the zip: source text} for each runtime this export has, plus a README that lists them."""
    contract = Contract.from_manifest(manifest)
    written = {}
    tflite = _preferred(manifest, "tflite")
    if tflite is not None:
        written["android/LiteRtClassifier.kt"] = litert_kotlin(contract, tflite, _tflite_io(model_dir / tflite["path"]))
    ncnn = _preferred(manifest, "ncnn")
    if ncnn is not None:
        written["android/ncnn_classifier.cpp"] = ncnn_cpp(contract, ncnn)
    coreml = _preferred(manifest, "coreml")
    if coreml is not None:
        written["ios/CoreMLClassifier.swift"] = coreml_swift(contract, coreml)
    written["README.md"] = _bundle_readme(manifest, written)
    return written


def _preferred(manifest: dict, runtime: str) -> dict | None:
    candidates = [a for a in manifest["artifacts"] if a["runtime"] == runtime]
    ranked = sorted(candidates, key=lambda a: (not a["parity"]["passed"], _rank(a["precision"])))
    return ranked[0] if ranked else None


def _rank(precision: str) -> int:
    return SNIPPET_PREFERENCE.index(precision) if precision in SNIPPET_PREFERENCE else len(SNIPPET_PREFERENCE)


def _tflite_io(path: Path) -> dict:
    """The .tflite's input and output tensors as LiteRT reports them: dtype, shape, quantization."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return {
        "input_dtype": tensor_in["dtype"].__name__, "input_shape": tensor_in["shape"].tolist(),
        "input_quantization": tensor_in["quantization"], "output_dtype": tensor_out["dtype"].__name__,
        "output_shape": tensor_out["shape"].tolist(), "output_quantization": tensor_out["quantization"],
    }


def _floats(values) -> str:
    return ", ".join(f"{value:.7g}f" for value in values)


def _kotlin_pixel(component: str) -> str:
    return {"r": "(p shr 16) and 0xFF", "g": "(p shr 8) and 0xFF", "b": "p and 0xFF",
            "gray": "(0.299f * ((p shr 16) and 0xFF) + 0.587f * ((p shr 8) and 0xFF) + 0.114f * (p and 0xFF))",
            }[component]


def litert_kotlin(contract: Contract, artifact: dict, io: dict) -> str:
    file_name = Path(artifact["path"]).name
    int8_input = io["input_dtype"] == "int8"
    int8_output = io["output_dtype"] == "int8"
    in_scale, in_zero = io["input_quantization"]
    out_scale, out_zero = io["output_quantization"]
    outputs = int(io["output_shape"][-1])
    bytes_per_value = 1 if int8_input else 4
    order = ", ".join(contract.channel_order)
    channel_lines = "\n".join(
        f"            put(({_kotlin_pixel(component)}) / PIXEL_SCALE, {index})  // {component}"
        for index, component in enumerate(contract.channel_order)
    )
    if int8_input:
        store = (f"val q = Math.round(value / {in_scale:.9g}f + {in_zero}).coerceIn(-128, 127)\n"
                 "            input.put(q.toByte())")
    else:
        store = "input.putFloat(value)"
    if int8_output:
        read_output = (f"val raw = Array(1) {{ ByteArray({outputs}) }}\n        interpreter.run(input, raw)\n"
                       f"        return FloatArray({outputs}) {{ i -> (raw[0][i] - ({out_zero})) * {out_scale:.9g}f }}")
    else:
        read_output = (f"val scores = Array(1) {{ FloatArray({outputs}) }}\n        interpreter.run(input, scores)\n"
                       "        return scores[0]")
    return f"""// {file_name}: LiteRT (TensorFlow Lite) on Android, generated by mobile-export for this export.
// Input "{contract.input_name}": {io['input_shape']} {io['input_dtype']}, NHWC, channels {order}.
// tensor = (pixel / {contract.pixel_scale:g} - mean) / std with mean = {list(contract.mean)}, std = {list(contract.std)}
// Output: {io['output_shape']} {io['output_dtype']}; class i is line i of labels.txt.
// Gradle: implementation("com.google.ai.edge.litert:litert:<version>"); put {file_name} in src/main/assets.
import android.content.Context
import android.graphics.Bitmap
import org.tensorflow.lite.Interpreter
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.channels.FileChannel

class LiteRtClassifier(context: Context) {{
    private val interpreter: Interpreter = context.assets.openFd("{file_name}").use {{ fd ->
        val model = fd.createInputStream().channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
        Interpreter(model, Interpreter.Options().setNumThreads(4))
    }}

    /** `bitmap`: already center-cropped to the photo's central square, as the model was checked. */
    fun classify(bitmap: Bitmap): FloatArray {{
        val scaled = Bitmap.createScaledBitmap(bitmap, WIDTH, HEIGHT, true)
        val pixels = IntArray(WIDTH * HEIGHT)
        scaled.getPixels(pixels, 0, WIDTH, 0, 0, WIDTH, HEIGHT)
        val input = ByteBuffer.allocateDirect({bytes_per_value} * WIDTH * HEIGHT * CHANNELS).order(ByteOrder.nativeOrder())
        for (p in pixels) {{
            fun put(pixel: Float, channel: Int) {{
                val value = (pixel - MEAN[channel]) / STD[channel]
                {store}
            }}
{channel_lines}
        }}
        input.rewind()
        {read_output}
    }}

    fun close() = interpreter.close()

    companion object {{
        const val WIDTH = {contract.width}
        const val HEIGHT = {contract.height}
        const val CHANNELS = {contract.channels}
        const val PIXEL_SCALE = {contract.pixel_scale:g}f
        val MEAN = floatArrayOf({_floats(contract.mean)})
        val STD = floatArrayOf({_floats(contract.std)})
    }}
}}
"""


def ncnn_cpp(contract: Contract, artifact: dict) -> str:
    details = artifact.get("details", {})
    param = Path(artifact["path"]).name
    weights = Path(artifact["files"][1]["path"]).name if len(artifact["files"]) > 1 else param.replace(".param", ".bin")
    input_blob, output_blob = details.get("input_blob", "in0"), details.get("output_blob", "out0")
    pixel_type = {"r": "RGBA2RGB", "b": "RGBA2BGR", "gray": "RGBA2GRAY"}[contract.channel_order[0]]
    fp16 = "true" if artifact["precision"] == "fp16" else "false"
    return f"""// {param} + {weights}: ncnn on Android (ncnn-android, JNI side), generated by mobile-export for this export.
// Input blob "{input_blob}": {contract.channels} x {contract.height} x {contract.width}, channels {", ".join(contract.channel_order)}.
// The contract tensor = (pixel / {contract.pixel_scale:g} - mean) / std is ncnn's (pixel - mean_vals) * norm_vals with
// mean_vals = mean * {contract.pixel_scale:g} and norm_vals = 1 / (std * {contract.pixel_scale:g}).
// Output blob "{output_blob}": the class scores; class i is line i of labels.txt.
#include <android/asset_manager.h>
#include <vector>
#include "net.h"

static const float kMeanVals[{contract.channels}] = {{{_floats(contract.ncnn_mean)}}};
static const float kNormVals[{contract.channels}] = {{{_floats(contract.ncnn_norm)}}};

int load_model(ncnn::Net& net, AAssetManager* assets) {{
    net.opt.use_vulkan_compute = false;
    net.opt.use_fp16_storage = {fp16};  // {artifact["precision"]} weights; the options the parity check ran with
    net.opt.use_fp16_arithmetic = {fp16};
    if (net.load_param(assets, "{param}") != 0) return -1;
    return net.load_model(assets, "{weights}");
}}

// `rgba`: the photo's central square as RGBA_8888 pixels (an Android Bitmap), `width` x `height`.
std::vector<float> classify(ncnn::Net& net, const unsigned char* rgba, int width, int height) {{
    ncnn::Mat in = ncnn::Mat::from_pixels_resize(rgba, ncnn::Mat::PIXEL_{pixel_type}, width, height,
                                                 {contract.width}, {contract.height});
    in.substract_mean_normalize(kMeanVals, kNormVals);
    ncnn::Extractor extractor = net.create_extractor();
    extractor.input("{input_blob}", in);
    ncnn::Mat out;
    extractor.extract("{output_blob}", out);
    ncnn::Mat flat = out.reshape(out.w * out.h * out.c);
    std::vector<float> scores(flat.w);
    for (int i = 0; i < flat.w; i++) scores[i] = flat[i];
    return scores;
}}
"""


def coreml_swift(contract: Contract, artifact: dict) -> str:
    details = artifact.get("details", {})
    package = Path(artifact["path"]).name
    class_name = re.sub(r"\W", "_", Path(package).stem)  # Xcode names the generated class after the file
    image_input = (details.get("input") or {}).get("name", "image")
    classifier = details.get("classifier")
    if classifier:
        results = ("guard let best = (request.results as? [VNClassificationObservation])?.first else { return }\n"
                   "            completion(best.identifier, best.confidence)")
        signature = "completion: @escaping (String, Float) -> Void"  # confidence = the raw score, no softmax
    else:
        output = details.get("output_name", "output")
        results = ("guard let scores = (request.results as? [VNCoreMLFeatureValueObservation])?\n"
                   f"                .first(where: {{ $0.featureName == \"{output}\" }})?.featureValue.multiArrayValue else {{ return }}\n"
                   "            completion(scores)")
        signature = "completion: @escaping (MLMultiArray) -> Void"
    return f"""// {package}: Core ML on iOS 16+, generated by mobile-export for this export.
// The model takes an image ("{image_input}", {contract.width} x {contract.height}, {contract.color.upper() if contract.channels == 3 else "grayscale"}) and applies
// the contract tensor = (pixel / {contract.pixel_scale:g} - mean) / std itself (mean = [{", ".join(f"{m:g}" for m in contract.mean)}],
// std = [{", ".join(f"{s:g}" for s in contract.std)}]): hand it pixels, not a normalized tensor.
// Xcode compiles {package} into the class `{class_name}`; class i is line i of labels.txt.
import CoreML
import Vision

final class CoreMLClassifier {{
    private let model: VNCoreMLModel

    init() throws {{
        let configuration = MLModelConfiguration()
        configuration.computeUnits = .all
        model = try VNCoreMLModel(for: {class_name}(configuration: configuration).model)
    }}

    func classify(_ image: CGImage, {signature}) throws {{
        let request = VNCoreMLRequest(model: model) {{ request, _ in
            {results}
        }}
        request.imageCropAndScaleOption = .centerCrop  // the central square, scaled to {contract.width} x {contract.height}
        try VNImageRequestHandler(cgImage: image).perform([request])
    }}
}}
"""


def _bundle_readme(manifest: dict, written: dict[str, str]) -> str:
    model = manifest["model"]["name"]
    lines = [f"# {model}: mobile bundle", "",
             "Made by `mobile-export report`. Every artifact here is the file the export checked for parity "
             "(SHA-256 verified against manifest.json when this zip was made).", "",
             f"- `{CONTRACT_NAME}`: the input contract (shape, layout, color order, pixel scale, mean, std) and each "
             "artifact's input/output tensors", "- `manifest.json`: checksums, parity, tool versions",
             "- `labels.txt`: class i is line i" if manifest.get("labels") else "- no labels file in this export",
             "- `report.html` / `report.md`: parity, frame rate, op counts, sizes", ""]
    lines += [f"- `{name}`" for name in sorted(written)]
    runtimes = {a["runtime"] for a in manifest["artifacts"]}
    if "coreml" not in runtimes:
        lines.append("- no Core ML snippet: this export has no Core ML artifact (export with --target ios or all)")
    if not runtimes & {"tflite", "ncnn"}:
        lines.append("- no Android snippet: this export has no TFLite or ncnn artifact (export with --target android)")
    lines.append("")
    lines += ["| artifact | runtime | precision | parity |", "|---|---|---|---|"]
    lines += [f"| {Path(a['path']).name} | {a['runtime']} | {a['precision']} | "
              f"{'pass' if a['parity']['passed'] else 'FAIL'} (cosine {a['parity']['cosine']:.6f}) |"
              for a in manifest["artifacts"]]
    return "\n".join(lines) + "\n"
