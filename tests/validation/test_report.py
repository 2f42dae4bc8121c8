"""report.html / report.md and bundle.zip for app teams, from a real export of the digits model."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import zipfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli import main

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync")
# Test input for the report's FPS section, in bench.json's schema; not a measurement of anything.
BENCH_ROWS = [
    {"profile": "host", "artifact": "my_mod_int8.tflite", "runtime": "tflite", "precision": "int8",
     "latency_ms": {"p50": 1.5, "p90": 1.9, "p99": 2.4, "mean": 1.6}, "fps": 666.67, "fps_basis": "p50",
     "kind": "measured", "target_fps": 30.0, "passed": True, "gated": False, "method": "test input"},
    {"profile": "test-phone", "artifact": "my_mod_fp32.ncnn.param", "runtime": "ncnn", "precision": "fp32",
     "latency_ms": {"p50": None, "p90": None, "p99": None, "mean": 40.0}, "fps": 25.0, "fps_basis": "mean",
     "kind": "projected", "target_fps": 30.0, "passed": False, "gated": True, "method": "test input"},
]


def report_cli(model_dir: Path):
    return CliRunner().invoke(main, ["report", str(model_dir)])


@pytest.fixture(scope="module")
def reported(digits_android_export, tmp_path_factory) -> Path:
    """A copy of the export with explain's findings for int8, then report.html, report.md and bundle.zip."""
    model_dir = tmp_path_factory.mktemp("reported") / "my_mod"
    shutil.copytree(digits_android_export, model_dir)
    explained = CliRunner().invoke(main, ["explain", str(model_dir), "--artifact", "int8", "--samples", "10"])
    assert explained.exit_code == 0, explained.output
    result = report_cli(model_dir)
    assert result.exit_code == 0, result.output
    return model_dir


def chromium_dom(html_path: Path, profile_dir: Path) -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.fail("headless Chromium is not installed: run `make browser` (installs Debian's chromium package)")
    result = subprocess.run(
        [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile_dir}", "--virtual-time-budget=10000", "--dump-dom",
         html_path.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0 and "<body" in result.stdout, result.stderr[-2000:]
    return result.stdout


class TableRows(HTMLParser):
    """{table class: [row cells]} of a document."""

    def __init__(self):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._table, self._row, self._cell = None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._table = dict(attrs).get("class", "")
            self.tables.setdefault(self._table, [])
        elif tag == "tr":
            self._row = []
        elif tag == "td":
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row:
            self.tables[self._table].append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def body_attributes(dom: str) -> dict[str, str]:
    return dict(re.findall(r'(data-[\w-]+)="([^"]*)"', re.search(r"<body[^>]*>", dom).group(0)))


def test_chromium_renders_the_parity_and_fps_tables_and_decodes_every_plot(reported, tmp_path):
    model_dir = tmp_path / "my_mod"
    shutil.copytree(reported, model_dir)
    (model_dir / "bench.json").write_text(json.dumps({"schema_version": 1, "rows": BENCH_ROWS, "not_measured": []}))
    assert report_cli(model_dir).exit_code == 0

    dom = chromium_dom(model_dir / "report.html", tmp_path / "chromium-profile")
    parser = TableRows()
    parser.feed(dom)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    parity_rows = {row[0]: row for row in parser.tables["parity"]}
    for artifact in manifest["artifacts"]:
        row = parity_rows[Path(artifact["path"]).name]
        assert row[5] == f"{artifact['parity']['cosine']:.6f}" and row[-1] == "pass"
    fps_rows = parser.tables["fps"]
    assert [(row[0], row[1], row[8], row[11]) for row in fps_rows] == [
        ("host", "my_mod_int8.tflite", "666.7", "pass"), ("test-phone", "my_mod_fp32.ncnn.param", "25.0", "FAIL")]
    explained = json.loads((model_dir / "my_mod_int8.explain.json").read_text())
    assert len(parser.tables["layers"]) == len(explained["layers"])
    images = body_attributes(dom)
    assert images["data-images"] == images["data-images-decoded"] == "2"  # latency and per-layer error plots


def test_report_without_bench_json_says_how_to_get_fps(reported):
    markdown = (reported / "report.md").read_text()
    assert "no FPS measurement yet: run mobile-export bench" in markdown
    assert "no FPS measurement yet" in (reported / "report.html").read_text()
    for artifact in json.loads((reported / "manifest.json").read_text())["artifacts"]:
        assert f"| {Path(artifact['path']).name} | {artifact['runtime']} | {artifact['precision']} |" in markdown
    assert "CONV_2D" in markdown and "Convolution" in markdown  # op counts of the TFLite and ncnn artifacts
    for link in re.findall(r"\]\((report_plots/[^)]+)\)", markdown):
        assert (reported / link).is_file()


def test_parity_section_names_each_changed_top1_answer_and_the_references_lead(reported, tmp_path):
    model_dir = tmp_path / "my_mod"
    shutil.copytree(reported, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    (int8,) = [a for a in manifest["artifacts"] if a["precision"] == "int8" and a["runtime"] == "tflite"]
    # Test input: a near-tie and a real error, as compare() records them.
    int8["parity"]["top1_changes"] = [
        {"sample": 3, "reference_class": 7, "artifact_class": 1, "reference_lead": 0.004},
        {"sample": 9, "reference_class": 2, "artifact_class": 5, "reference_lead": 1.25},
    ]
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    assert report_cli(model_dir).exit_code == 0
    expected = (f"Top-1 changes in {Path(int8['path']).name}: sample 3 (class 7 -> 1, reference lead 0.004), "
                "sample 9 (class 2 -> 5, reference lead 1.250).")
    assert expected in (model_dir / "report.md").read_text()
    assert expected.replace("->", "-&gt;") in (model_dir / "report.html").read_text()


def test_parity_table_gives_top1_agreement_with_its_95_percent_interval(reported):
    """Each artifact's interval is the Wilson score interval of its own count of agreeing samples, computed
    here by scipy (whose Wilson interval reproduces Newcombe 1998, Table I: 81 of 263 -> 0.2553-0.3662), and
    both reports print it next to the agreement."""
    from scipy.stats import binomtest

    manifest = json.loads((reported / "manifest.json").read_text())
    markdown, page = (reported / "report.md").read_text(), (reported / "report.html").read_text()
    for artifact in manifest["artifacts"]:
        parity = artifact["parity"]
        agreeing = parity["samples"] - len(parity["top1_changes"])
        assert parity["top1_agreement"] == agreeing / parity["samples"]
        wilson = binomtest(agreeing, parity["samples"]).proportion_ci(0.95, method="wilson")
        # scipy's z is 1.959964, ours 1.96: on 150 samples the bounds differ by 1e-6 at most.
        assert parity["top1_interval"] == pytest.approx([wilson.low, wilson.high], abs=1e-5), artifact["path"]
        printed = f"{agreeing / parity['samples']:.3f} ({wilson.low:.3f}-{wilson.high:.3f})"
        assert f"| {printed} |" in markdown and f"<td>{printed}</td>" in page, (artifact["path"], printed)


def test_parity_section_says_which_tensors_an_int8_artifact_keeps_in_float_and_why(reported, tmp_path):
    model_dir = tmp_path / "my_mod"
    shutil.copytree(reported, model_dir)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    (int8,) = [a for a in manifest["artifacts"] if a["precision"] == "int8" and a["runtime"] == "tflite"]
    assert int8["details"]["int8_recipe"]["float_fallback"]["needed"] is False  # the digits model needs none
    assert report_cli(model_dir).exit_code == 0
    assert "in float" not in (model_dir / "report.md").read_text()
    # Test input: the record the TFLite target writes when the fallback was needed and passed.
    int8["details"]["int8_recipe"]["float_fallback"] = {
        "needed": True, "passed": True, "before": {"cosine": 0.974897}, "after": {"cosine": 0.999891},
        "float_tensors": ["model_1/tf.math.reduce_mean/Mean"], "float_ops": ["model_1/tf.math.reduce_mean/Mean"],
    }
    (model_dir / "manifest.json").write_text(json.dumps(manifest))
    assert report_cli(model_dir).exit_code == 0
    expected = (f"{Path(int8['path']).name} keeps 1 activation tensor(s) in float (model_1/tf.math.reduce_mean/Mean): "
                "int8 alone failed the gate on calibration photos (cosine 0.974897), with them it reached 0.999891.")
    assert expected in (model_dir / "report.md").read_text()
    assert expected in (model_dir / "report.html").read_text()


# What makes a browser fetch: a URL of a network scheme or a protocol-relative one ("//host/..."), and in CSS
# every @import and every url() that is not inline data (a relative one would fetch a file the bundle lacks).
NETWORK_URL = re.compile(r"^\s*(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
CSS_FETCHES = re.compile(r"""@import\b[^;]*|url\(\s*(?!["']?\s*data:)[^)]*\)""", re.IGNORECASE)


class NetworkReferences(HTMLParser):
    """Everything in a page that would load from elsewhere: attribute values holding a network URL (src, href,
    srcset, a refresh's url=, ...), CSS fetches in <style> and style="", and network URLs in scripts."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []
        self._element = None

    def handle_starttag(self, tag, attrs):
        self._element = tag
        for name, value in attrs:
            if value is None or value.lstrip().lower().startswith("data:"):
                continue
            if name == "style":
                self.found += CSS_FETCHES.findall(value)
            self.found += [part for part in re.split(r"[\s,;=]+", value) if NETWORK_URL.match(part)]

    def handle_endtag(self, tag):
        self._element = None

    def handle_data(self, data):
        if self._element == "style":
            self.found += CSS_FETCHES.findall(data)
        elif self._element == "script":
            self.found += re.findall(r"(?:https?|wss?|ftp):[^\s'\")]*", data, re.IGNORECASE)


def network_references(page: str) -> list[str]:
    parser = NetworkReferences()
    parser.feed(page)
    parser.close()
    return parser.found


def test_html_loads_nothing_from_the_network(reported):
    page = (reported / "report.html").read_text()
    assert network_references(page) == []
    sources = re.findall(r'<img[^>]*src="([^"]{0,30})', page)
    assert sources and all(source.startswith("data:image/png;base64,") for source in sources)
    # The page also tells the browser so: nothing from anywhere but its own inline styles, script and images.
    policy = re.search(r'http-equiv="Content-Security-Policy" content="([^"]*)"', page).group(1)
    assert policy.startswith("default-src 'none';") and not re.search(r"https?:|\*|//", policy)
    # The same report with one fetch added, each in a way the page's own markup could carry it.
    fetches = {
        "css url": ("</style>", "body{background:url(http://example.com/paper.png)}</style>"),
        "css @import": ("<style>", "<style>@import 'https://fonts.example.com/sans.css';"),
        "inline style": ("<body", '<body style="background-image: url( //cdn.example.com/x.png)"'),
        "srcset": ("<img ", '<img srcset="https://example.com/plot@2x.png 2x" '),
        "stylesheet": ("</head>", '<link rel="stylesheet" href="https://example.com/s.css"></head>'),
        "refresh": ("</head>", '<meta http-equiv="refresh" content="0; url=https://example.com/"></head>'),
        "script": ("</script>", "fetch('https://example.com/beacon');</script>"),
    }
    for name, (anchor, replacement) in fetches.items():
        assert anchor in page, name
        assert network_references(page.replace(anchor, replacement, 1)), f"{name} slipped through"


def test_bundle_holds_the_checked_artifacts_labels_contract_and_snippets(reported):
    manifest = json.loads((reported / "manifest.json").read_text())
    with zipfile.ZipFile(reported / "bundle.zip") as bundle:
        names = set(bundle.namelist())
        for artifact in manifest["artifacts"]:
            for record in artifact["files"]:
                assert hashlib.sha256(bundle.read(record["path"])).hexdigest() == record["sha256"]
        assert {"labels.txt", "manifest.json", "input_contract.json", "report.html", "README.md"} <= names
        contract = json.loads(bundle.read("input_contract.json"))
        kotlin = bundle.read("android/LiteRtClassifier.kt").decode()
        ncnn = bundle.read("android/ncnn_classifier.cpp").decode()
        readme = bundle.read("README.md").decode()
        assert bundle.read("labels.txt").decode().split() == (reported / "labels.txt").read_text().split()
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in bundle.infolist())
    assert contract["mean"] == [0.5, 0.5, 0.5] and contract["std"] == [0.25, 0.25, 0.25]
    assert contract["channel_order"] == ["r", "g", "b"] and contract["input_shape"] == [1, 3, 32, 32]
    # Snippets carry this export's numbers and names, not placeholders.
    assert '"my_mod_int8.tflite"' in kotlin and "floatArrayOf(0.5f, 0.5f, 0.5f)" in kotlin
    assert "const val WIDTH = 32" in kotlin and "FloatArray(10)" in kotlin
    ncnn_entry = next(a for a in manifest["artifacts"] if a["runtime"] == "ncnn" and a["precision"] == "fp16")
    assert f'extractor.input("{ncnn_entry["details"]["input_blob"]}", in)' in ncnn
    assert f'extractor.extract("{ncnn_entry["details"]["output_blobs"]["output"]}", out)' in ncnn
    assert "{127.5f, 127.5f, 127.5f}" in ncnn and "{0.01568627f, 0.01568627f, 0.01568627f}" in ncnn
    assert "PIXEL_RGBA2RGB" in ncnn and "no Core ML snippet" in readme


def test_bundle_is_byte_for_byte_reproducible(reported, tmp_path):
    from exporter.bundle import write_bundle

    model_dir = tmp_path / "my_mod"
    shutil.copytree(reported, model_dir)
    first = (model_dir / "bundle.zip").read_bytes()
    assert write_bundle(model_dir).read_bytes() == first


def test_bundle_refuses_an_artifact_changed_since_the_export(reported, tmp_path):
    model_dir = tmp_path / "my_mod"
    shutil.copytree(reported, model_dir)
    (model_dir / "bundle.zip").unlink()
    with open(model_dir / "my_mod_int8.tflite", "r+b") as artifact:
        artifact.seek(-1, 2)
        last = artifact.read(1)
        artifact.seek(-1, 2)
        artifact.write(bytes([last[0] ^ 0xFF]))
    result = report_cli(model_dir)
    assert result.exit_code == 2
    assert "my_mod_int8.tflite changed since the export" in result.output and "re-run the export" in result.output
    assert not (model_dir / "bundle.zip").exists()


def test_bundle_refuses_a_manifest_path_that_leads_out_of_the_model_folder(reported, tmp_path):
    """A hand-edited manifest must not smuggle another file of the machine into the zip for app teams."""
    model_dir = tmp_path / "my_mod"
    shutil.copytree(reported, model_dir)
    (model_dir / "bundle.zip").unlink()
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the app team")
    manifest = json.loads((model_dir / "manifest.json").read_text())
    manifest["artifacts"][0]["files"][0].update(path="../secret.txt",
                                                sha256=hashlib.sha256(secret.read_bytes()).hexdigest())
    (model_dir / "manifest.json").write_text(json.dumps(manifest))

    result = report_cli(model_dir)

    assert result.exit_code == 2
    assert "'../secret.txt', outside" in result.output and "re-run the export" in result.output
    assert not (model_dir / "bundle.zip").exists()


def test_core_ml_snippet_names_the_generated_class_and_reads_the_classifier():
    from core.target import SnippetContract
    from targets.coreml.snippet import coreml_swift

    contract = SnippetContract("input", 3, 224, 224, "bgr", 255.0, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    artifact = {"path": "my-net_int8.mlpackage", "precision": "int8",
                "details": {"input": {"name": "image"}, "classifier": {"scores_output": "var_1"}}}
    swift = coreml_swift(contract, artifact)
    assert "my_net_int8(configuration: configuration)" in swift and '("image", 224 x 224, BGR)' in swift
    assert "VNClassificationObservation" in swift and "mean = [0.5, 0.5, 0.5]" in swift
    artifact["details"].update(classifier=None, output_name="scores")
    assert '$0.featureName == "scores"' in coreml_swift(contract, artifact)
