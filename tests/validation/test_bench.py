"""`mobile-export bench`: host measurement, projected rows with their intervals, the FPS gate's verdicts and exit
codes, and the adb path."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from exporter.cli.bench import bench
from targets.ncnn.device import parse_benchncnn
from targets.tflite.device import parse_benchmark_model
from validation.host_bench import MeasureRequest, StoppingRule, measure_on_host, time_runs
from validation.profiles import BUILTIN_PROFILES_DIR, load_profiles

ROW_KEYS = {"profile", "artifact", "runtime", "precision", "latency_ms", "fps", "kind", "target_fps", "verdict",
            "passed", "interval", "method"}
REMOTE = "/data/local/tmp/mobile-export"


@pytest.fixture(scope="module")
def exported(digits_android_export, tmp_path_factory) -> Path:
    """A copy of the session's android export of the digits model (bench writes bench.json and logs into it)."""
    folder = tmp_path_factory.mktemp("bench") / "my_mod"
    shutil.copytree(digits_android_export, folder)
    return folder


@pytest.fixture(scope="module")
def gate_profiles(tmp_path_factory) -> Path:
    """Two user profiles calibrated like the built-in Raspberry Pi 5: one target no device reaches, one any does."""
    folder = tmp_path_factory.mktemp("profiles")
    source = (BUILTIN_PROFILES_DIR / "raspberry-pi-5.toml").read_text()
    assert "target_fps = 30" in source
    (folder / "unreachable.toml").write_text(source.replace("target_fps = 30", "target_fps = 1000000"))
    (folder / "reachable.toml").write_text(source.replace("target_fps = 30", "target_fps = 0.001"))
    return folder


def run_bench(args: list, env: dict | None = None):
    return CliRunner().invoke(bench, [str(a) for a in args], env=env, catch_exceptions=False)


def rows_of(result) -> list[dict]:
    return json.loads(result.stdout)["rows"]


# ---- the command ------------------------------------------------------------------------------------------


def test_json_rows_have_the_schema_and_say_measured_or_projected(exported):
    result = run_bench([exported, "--profile", "host,raspberry-pi-4", "--budget", "0.3", "--threads", "1", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["passed"] else 1), result.stderr
    assert report["host"]["logical_cores"] >= 1 and "ncnn" in report["host"]["runtimes"]
    rows = report["rows"]
    assert all(ROW_KEYS <= set(row) for row in rows)
    host = [row for row in rows if row["profile"] == "host"]
    assert {(r["runtime"], r["precision"]) for r in host} == {
        ("onnx", "fp32"), ("tflite", "fp32"), ("tflite", "fp16"), ("tflite", "int8"), ("ncnn", "fp32"), ("ncnn", "fp16"),
        ("ncnn", "int8")}
    for row in host:
        latency = row["latency_ms"]
        assert row["kind"] == "measured" and row["gated"] is True
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert row["fps"] == pytest.approx(1000 / latency["p50"], rel=1e-3)
        assert row["passed"] == (row["fps"] >= row["target_fps"]) and row["interval"] is None
        details = row["details"]
        assert details["threads"] == 1 and details["runs"] >= 1
        assert details["peak_rss_mb"] >= details["baseline_rss_mb"] > 0
    ncnn_settings = {r["precision"]: r["details"]["settings"] for r in host if r["runtime"] == "ncnn"}
    assert ncnn_settings["fp16"]["use_fp16_storage"] is True and ncnn_settings["fp32"]["use_fp16_storage"] is False
    assert ncnn_settings["int8"]["use_int8_inference"] is True and ncnn_settings["int8"]["use_fp16_storage"] is False
    for row in (r for r in host if r["runtime"] == "tflite"):  # LiteRT's own CPU path, checked, not assumed
        assert row["details"]["settings"] == {"delegate": "XNNPACK (LiteRT's default CPU delegate)", "num_threads": 1}
    assert "XNNPACK" in (exported / "logs" / "bench.log").read_text()  # LiteRT's chatter went to the log
    projected = [row for row in rows if row["profile"] == "raspberry-pi-4"]
    assert len(projected) == 7  # every artifact: the Pi 4 profile lists ncnn, tflite and onnxruntime
    for row in projected:
        # A projection is one mean figure: no percentile is invented for it.
        assert row["kind"] == "projected" and row["latency_ms"]["p50"] is None and row["latency_ms"]["p99"] is None
        assert row["fps"] == pytest.approx(1000 / row["latency_ms"]["mean"], rel=1e-3)
        assert row["method"].startswith("projected") and "proxy" in row["method"]
        interval, target_ms = row["interval"], 1000 / row["target_fps"]
        assert interval["level"] == 0.9 and interval["fast_ms"] < row["latency_ms"]["mean"] < interval["slow_ms"]
        assert 0.01 <= interval["chance_of_meeting_target"] <= 0.99
        expected = ("pass" if interval["slow_ms"] <= target_ms else "FAIL" if interval["fast_ms"] > target_ms
                    else "uncertain")
        assert row["verdict"] == expected and row["passed"] == (expected == "pass")
        assert row["details"]["held_out_pairs"] > 0 and "held out" in row["details"]["validation"]
    written = json.loads((exported / "bench.json").read_text())
    assert written["rows"] == rows


def test_gate_exits_1_below_the_target_and_0_above_it(exported, gate_profiles):
    failed = run_bench([exported, "--no-host", "--profiles-dir", gate_profiles, "--profile", "unreachable"])
    assert failed.exit_code == 1
    assert "frame-rate gate failed" in failed.stderr and "unreachable x my_mod_fp32.ncnn.param" in failed.stderr
    assert "FAIL" in failed.stdout and "projected" in failed.stdout
    passed = run_bench([exported, "--no-host", "--profiles-dir", gate_profiles, "--profile", "reachable"])
    assert passed.exit_code == 0, passed.output
    assert "gate (reachable): PASSED" in passed.stdout


def _profile_with_target(folder: Path, name: str, target_fps: float) -> Path:
    source = (BUILTIN_PROFILES_DIR / "raspberry-pi-5.toml").read_text()
    (folder / f"{name}.toml").write_text(source.replace("target_fps = 30", f"target_fps = {target_fps!r}"))
    return folder


def test_a_projection_whose_central_figure_meets_the_target_but_whose_slow_end_does_not_is_uncertain(exported,
                                                                                                   tmp_path):
    first = run_bench([exported, "--no-host", "--target", "ncnn", "--profile", "raspberry-pi-5", "--json"])
    row = next(r for r in rows_of(first) if r["artifact"].endswith("fp32.ncnn.param"))
    mean, slow = row["latency_ms"]["mean"], row["interval"]["slow_ms"]
    # a target the central estimate meets (an optimistic gate would pass it) and the slow end misses
    folder = _profile_with_target(tmp_path, "straddled", 1000 / math.sqrt(mean * slow))
    result = run_bench([exported, "--no-host", "--target", "ncnn", "--profiles-dir", folder, "--profile", "straddled"])
    assert result.exit_code == 1
    line = next(line for line in result.stdout.splitlines() if line.startswith("straddled") and "fp32.ncnn" in line)
    assert line.endswith("uncertain") and "UNCERTAIN" in result.stdout
    assert "frame-rate gate uncertain" in result.stderr and "--device-profile" in result.stderr
    # the same row passes when its slow end meets the target
    passing = _profile_with_target(tmp_path, "roomy", 1000 / (1.01 * slow))
    roomy = run_bench([exported, "--no-host", "--target", "ncnn", "--profiles-dir", passing, "--profile", "roomy",
                       "--json"])
    assert next(r for r in rows_of(roomy) if r["artifact"] == row["artifact"])["verdict"] == "pass"


def test_a_stricter_interval_level_widens_the_interval_the_gate_checks(exported):
    default = run_bench([exported, "--no-host", "--target", "ncnn", "--profile", "raspberry-pi-5", "--json"])
    strict = run_bench([exported, "--no-host", "--target", "ncnn", "--profile", "raspberry-pi-5", "--json",
                        "--interval-level", "0.98"])
    for loose, tight in zip(rows_of(default), rows_of(strict)):
        assert tight["interval"]["level"] == 0.98
        assert tight["interval"]["slow_ms"] > loose["interval"]["slow_ms"]
        assert tight["interval"]["fast_ms"] < loose["interval"]["fast_ms"]


def test_host_rows_are_shown_but_not_gated_unless_named(exported, gate_profiles):
    result = run_bench([exported, "--profiles-dir", gate_profiles, "--profile", "reachable", "--budget", "0.2",
                        "--threads", "1", "--json"])
    assert result.exit_code == 0, result.stderr  # however slow this host is
    rows = rows_of(result)
    assert {row["kind"] for row in rows if row["profile"] == "host"} == {"measured"}
    assert all(not row["gated"] for row in rows if row["profile"] == "host")
    assert all(row["gated"] and row["kind"] == "projected" for row in rows if row["profile"] == "reachable")


def test_by_default_the_profiles_of_the_exports_platform_are_gated(exported):
    result = run_bench([exported, "--no-host", "--json"])
    profiles = {row["profile"] for row in rows_of(result)}
    android = {p.name for p in load_profiles().values() if "coreml" not in p.runtimes and "ncnn" in p.runtimes}
    assert profiles == android and "iphone-15-pro" not in profiles
    assert result.exit_code == (0 if json.loads(result.stdout)["passed"] else 1)


@pytest.mark.parametrize("make_args, message", [
    (lambda export, tmp: [tmp], "run mobile-export export first"),
    (lambda export, tmp: [export, "--profile", "no-such-phone"], "unknown profile no-such-phone"),
    (lambda export, tmp: [export, "--benchmark-binary", tmp / "benchncnn"], "--device adb:SERIAL is missing"),
    (lambda export, tmp: [export, "--device", "usb:123", "--benchmark-binary", tmp / "benchncnn"], "adb:SERIAL"),
])
def test_bad_input_exits_2_with_the_fix(make_args, message, exported, tmp_path):
    (tmp_path / "benchncnn").write_text("")
    result = run_bench(make_args(exported, tmp_path))
    assert result.exit_code == 2
    assert message in result.stderr and "fix:" in result.stderr


# ---- the adb path -----------------------------------------------------------------------------------------

FAKE_ADB = """#!{python}
import json, os, sys
args = sys.argv[1:]
with open(os.environ["FAKE_ADB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args == ["devices"]:
    print("List of devices attached")
    print(os.environ["FAKE_ADB_DEVICES"])
    sys.exit(0)
assert args[0] == "-s", args
command = args[2:]
if command[0] == "push":
    print(command[1] + ": 1 file pushed, 0 skipped.")
elif command[0] == "shell" and "getprop" in command[1]:
    print("Fake Phone 9")
elif command[0] == "shell" and "benchncnn" in command[1] and "param=" in command[1]:
    param = command[1].split("param=")[1].split()[0].strip("'")
    # benchncnn's real format (benchmark/benchncnn.cpp): settings, then "%20s  min = %7.2f  max = %7.2f  avg = %7.2f"
    sys.stderr.write("loop_count = 50\\nnum_threads = 4\\npowersave = 0\\ngpu_device = -1\\ncooling_down = 0\\n")
    sys.stderr.write("%20s  min = %7.2f  max = %7.2f  avg = %7.2f\\n" % (param, 1.52, 1.98, 1.61))
"""


@pytest.fixture()
def fake_adb(tmp_path):
    folder = tmp_path / "bin"
    folder.mkdir()
    adb = folder / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(0o755)
    log = tmp_path / "adb_calls.jsonl"
    binary = tmp_path / "benchncnn"
    binary.write_bytes(b"\x7fELF fake")
    env = {"PATH": str(folder), "FAKE_ADB_LOG": str(log), "FAKE_ADB_DEVICES": "FAKE123\tdevice"}
    return env, log, binary


def test_device_run_pushes_the_param_files_and_runs_benchncnn_on_them(exported, fake_adb):
    env, log, binary = fake_adb
    result = run_bench([exported, "--no-host", "--target", "ncnn", "--device", "adb:FAKE123",
                        "--benchmark-binary", binary, "--json"], env=env)
    assert result.exit_code in (0, 1), result.stderr
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls[0] == ["devices"]
    calls = calls[1:]
    assert all(call[:2] == ["-s", "FAKE123"] for call in calls)
    pushes = [call[3:] for call in calls if call[2] == "push"]
    assert pushes == [[str(binary), f"{REMOTE}/benchncnn"],
                      [str(exported / "my_mod_fp32.ncnn.param"), f"{REMOTE}/my_mod_fp32.ncnn.param"],
                      [str(exported / "my_mod_fp16.ncnn.param"), f"{REMOTE}/my_mod_fp16.ncnn.param"],
                      [str(exported / "my_mod_int8.ncnn.param"), f"{REMOTE}/my_mod_int8.ncnn.param"]]
    runs = [call[3] for call in calls if call[2] == "shell" and "benchncnn 50" in call[3]]
    assert len(runs) == 3
    assert f"param={REMOTE}/my_mod_fp32.ncnn.param" in runs[0] and "'shape=[32,32,3]'" in runs[0]
    assert f"cd {REMOTE} && {REMOTE}/benchncnn 50 4 0 -1 0" in runs[0]
    device_rows = [row for row in rows_of(result) if row["profile"] == "adb:FAKE123"]
    assert [row["precision"] for row in device_rows] == ["fp32", "fp16", "int8"]
    for row in device_rows:
        assert row["kind"] == "measured" and row["gated"] is True
        assert row["latency_ms"] == {"p50": None, "p90": None, "p99": None, "mean": 1.61}
        assert row["fps"] == pytest.approx(1000 / 1.61, rel=1e-3)
        assert "benchncnn" in row["method"] and "Fake Phone 9" in row["method"]


def test_a_measured_row_beats_the_projection_of_its_profile(exported, fake_adb, tmp_path):
    env, _, binary = fake_adb
    # the fake device runs each ncnn artifact in 1.61 ms; the projection of this tiny model is far faster, so with a
    # 1000 FPS target only the measurement can fail the gate
    folder = _profile_with_target(tmp_path, "my-board", 1000.0)
    result = run_bench([exported, "--no-host", "--target", "ncnn", "--profiles-dir", folder, "--profile", "my-board",
                        "--device", "adb:FAKE123", "--benchmark-binary", binary, "--device-profile", "my-board",
                        "--json"], env=env)
    rows = rows_of(result)
    measured = [row for row in rows if row["kind"] == "measured"]
    assert [row["artifact"] for row in measured] == ["my_mod_fp32.ncnn.param", "my_mod_fp16.ncnn.param",
                                                     "my_mod_int8.ncnn.param"]
    assert all(row["profile"] == "my-board" and row["gated"] and row["verdict"] == "FAIL" for row in measured)
    superseded = [row for row in rows if row["kind"] == "projected" and row["artifact"].endswith(".ncnn.param")]
    # the float rows' projections pass 1000 FPS; int8's does not (about 2 ms: the cost model's per-layer int8 cost,
    # learned on benchncnn's large int8 networks, dominates a 4-layer model), and is superseded all the same
    assert len(superseded) == 3 and all(row["verdict"] == "pass" for row in superseded if row["precision"] != "int8")
    assert all(not row["gated"] and row["details"]["superseded_by"] == "measured on the device" for row in superseded)
    onnx = [row for row in rows if row["runtime"] == "onnx"]
    assert onnx and all(row["gated"] and row["kind"] == "projected" for row in onnx)  # not measured: still gated
    assert result.exit_code == 1


def test_a_device_profile_needs_a_device(exported):
    result = run_bench([exported, "--no-host", "--device-profile", "raspberry-pi-5"])
    assert result.exit_code == 2 and "--device adb:SERIAL is missing" in result.stderr


def test_without_adb_on_path_the_device_run_says_what_to_install(exported, fake_adb, tmp_path):
    env, _, binary = fake_adb
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_bench([exported, "--no-host", "--device", "adb:FAKE123", "--benchmark-binary", binary],
                       env={**env, "PATH": str(empty)})
    assert result.exit_code == 2
    assert "adb is not on PATH" in result.stderr and "platform-tools" in result.stderr


def test_a_device_that_is_not_connected_is_named_with_what_adb_sees(exported, fake_adb):
    env, _, binary = fake_adb
    result = run_bench([exported, "--no-host", "--device", "adb:FAKE123", "--benchmark-binary", binary],
                       env={**env, "FAKE_ADB_DEVICES": "OTHER9\tunauthorized"})
    assert result.exit_code == 2
    assert "FAKE123 is not connected" in result.stderr and "OTHER9 (unauthorized)" in result.stderr


def test_benchmark_model_output_is_parsed_from_its_real_format():
    # From a real run of LiteRT's android_aarch64_benchmark_model: warm-up statistics first, then the timed runs.
    output = """INFO: Initialized session in 119.515ms.
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=9 first=87112 curr=51629 min=51629 max=87112 avg=58147.4 std=11478 p5=51629 median=51962 p95=87112

INFO: Running benchmark for at least 1000 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628

INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 63743.2
INFO: Memory footprint delta from the start of the tool (MB): init=55.4961 overall=55.4961
"""
    figures = parse_benchmark_model(output)
    assert figures["runs"] == 1000
    assert figures["p50_ms"] == pytest.approx(51.891) and figures["mean_ms"] == pytest.approx(63.7432)
    assert figures["min_ms"] == pytest.approx(49.088) and figures["max_ms"] == pytest.approx(686.105)
    # Older releases print no median: the mean is all there is, and p50 stays unknown.
    older = parse_benchmark_model("count=459 first=2143 curr=2101 min=2056 max=2656 avg=2177.1 std=124\n")
    assert older["p50_ms"] is None and older["mean_ms"] == pytest.approx(2.1771) and older["runs"] == 459


def test_benchncnn_output_is_parsed_from_its_real_format():
    # The header and result lines of benchncnn as printed on a OnePlus 7T (ncnn's benchmark/README.md).
    output = """[0 Adreno (TM) 640]  queueC=0[3]  queueG=0[3]  queueT=0[3]
[0 Adreno (TM) 640]  fp16p=1  fp16s=0  fp16a=1  int8s=0  int8a=0
loop_count = 8
num_threads = 4
powersave = 2
gpu_device = -1
cooling_down = 1
/data/local/tmp/mobile-export/mobilenet_v2_fp32.ncnn.param  min =    9.67  max =    9.79  avg =    9.72
"""
    figures = parse_benchncnn(output)
    assert (figures["min_ms"], figures["max_ms"], figures["mean_ms"]) == (9.67, 9.79, 9.72)
    assert figures["runs"] == 8 and figures["tool_settings"]["num_threads"] == 4


def test_tool_output_without_timings_is_a_converter_error():
    from core.errors import ConverterError

    with pytest.raises(ConverterError, match="no timing"):
        parse_benchncnn("loop_count = 8\nerror: load_param failed\n")
    with pytest.raises(ConverterError, match="no timing"):
        parse_benchmark_model("ERROR: Failed to allocate tensors!\nERROR: Benchmarking failed.\n")


# ---- the host measurement ---------------------------------------------------------------------------------


def test_timing_stops_when_p50_and_p90_settle():
    timings, warmup, stable, _ = time_runs(lambda: None, StoppingRule(warmup_seconds=0.0, stable_within=1e9))
    assert stable and len(timings) == 150 and warmup == 5  # checks at 100 and 150 runs: the second agrees


def test_timing_stops_at_the_budget_and_says_it_did_not_settle():
    rule = StoppingRule(warmup_runs=1, warmup_seconds=0.0, budget_seconds=0.2)
    timings, _, stable, seconds = time_runs(lambda: time.sleep(0.01), rule)
    assert not stable and 1 <= len(timings) < 100 and seconds >= 0.2
    assert all(t >= 10.0 for t in timings)


def test_timing_stops_at_max_runs_when_never_stable():
    rule = StoppingRule(warmup_runs=1, warmup_seconds=0.0, max_runs=120, stable_within=-1.0)
    timings, _, stable, _ = time_runs(lambda: None, rule)
    assert not stable and len(timings) == 120


def test_a_broken_artifact_is_a_converter_error_naming_it(tmp_path):
    from core.errors import ConverterError

    path = tmp_path / "broken.tflite"
    path.write_bytes(b"not a flatbuffer")
    with pytest.raises(ConverterError, match="tflite fp32 could not be timed"):
        measure_on_host(MeasureRequest("tflite", "fp32", (str(path),), (1, 3, 8, 8)), tmp_path / "bench.log")
