import numpy as np

from core.parity import DEFAULT_THRESHOLDS, ParityThresholds, compare


def logits(samples=20, classes=10, seed=0):
    return np.random.default_rng(seed).normal(size=(samples, classes)).astype(np.float32) * 3


def test_identical_outputs_pass_with_perfect_scores():
    reference = logits()
    result = compare(reference, reference.copy(), DEFAULT_THRESHOLDS["fp32"])
    assert result.passed and result.failures == ()
    assert result.max_abs == 0 and result.cosine == 1.0 and result.top1_agreement == 1.0 and result.top5_overlap == 1.0


def test_small_noise_passes_fp16_but_fails_fp32_and_says_by_how_much():
    reference = logits()
    noisy = reference + np.random.default_rng(1).normal(scale=0.02, size=reference.shape).astype(np.float32)
    assert compare(reference, noisy, DEFAULT_THRESHOLDS["fp16"]).passed
    fp32 = compare(reference, noisy, DEFAULT_THRESHOLDS["fp32"])
    assert not fp32.passed
    assert fp32.failures[0].startswith("cosine 0.99") and "< 0.99999" in fp32.failures[0]


def test_swapped_top_classes_fail_the_int8_top1_gate():
    reference = logits(samples=10)
    candidate = reference.copy()
    for row in candidate[:2]:  # 2 of 10 samples get a different winner: agreement 0.8 < 0.95
        first, second = np.argsort(-row)[:2]
        row[first], row[second] = row[second], row[first]
    result = compare(reference, candidate, ParityThresholds(cosine=0.5, top1_agreement=0.95))
    assert result.top1_agreement == 0.8
    assert not result.passed and any("top-1 agreement 0.8000 (8 of 10 samples) < 0.95" in f for f in result.failures)


def test_each_changed_top1_answer_is_recorded_with_the_references_lead():
    reference = np.array([[5.0, 4.99, 0.0], [1.0, 3.0, 0.0], [9.0, 0.0, 2.0]], dtype=np.float32)
    candidate = np.array([[4.9, 5.0, 0.0], [1.0, 3.1, 0.0], [0.0, 0.0, 9.0]], dtype=np.float32)
    result = compare(reference, candidate, DEFAULT_THRESHOLDS["int8"])
    near_tie, real_error = result.top1_changes
    assert (near_tie.sample, near_tie.reference_class, near_tie.artifact_class) == (0, 0, 1)
    assert abs(near_tie.reference_lead - 0.01) < 1e-5
    assert (real_error.sample, real_error.reference_class, real_error.artifact_class) == (2, 0, 2)
    assert abs(real_error.reference_lead - 7.0) < 1e-5
    recorded = result.to_manifest()["top1_changes"]
    assert [change["sample"] for change in recorded] == [0, 2] and recorded[1]["reference_lead"] == 7.0
    assert compare(reference, reference, DEFAULT_THRESHOLDS["int8"]).top1_changes == ()


def test_nan_outputs_and_shape_mismatch_fail():
    reference = logits()
    broken = reference.copy()
    broken[0, 0] = np.nan
    assert not compare(reference, broken, DEFAULT_THRESHOLDS["int8"]).passed
    mismatch = compare(reference, reference[:, :5], DEFAULT_THRESHOLDS["fp32"])
    assert not mismatch.passed and "shape" in mismatch.failures[0]


def test_feature_maps_have_no_ranking_metrics():
    reference = np.random.default_rng(2).normal(size=(3, 8, 4, 4))
    result = compare(reference, reference, DEFAULT_THRESHOLDS["fp32"])
    assert result.passed and result.top1_agreement is None


def test_top1_agreement_carries_its_95_percent_interval():
    reference = np.eye(50, 10, dtype=np.float32) + np.arange(10, dtype=np.float32) * 0.01
    candidate = reference.copy()
    candidate[:2] = candidate[:2, ::-1]  # two samples change their top-1 class
    result = compare(reference, candidate, DEFAULT_THRESHOLDS["int8"])
    assert result.top1_agreement == 0.96
    assert tuple(round(bound, 3) for bound in result.top1_interval) == (0.865, 0.989)
    assert compare(reference, reference, DEFAULT_THRESHOLDS["int8"]).top1_interval[1] == 1.0


def test_wilson_interval_stays_inside_0_1_and_is_total_ignorance_without_samples():
    from core.parity import wilson_interval

    assert wilson_interval(50, 50)[1] == 1.0
    assert wilson_interval(0, 50)[0] == 0.0
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_export_summary_gives_the_interval_of_the_lowest_top1_agreement(tmp_path, monkeypatch):
    from pathlib import Path
    from types import SimpleNamespace

    from core.artifact import Artifact
    from validation.report import summary_lines

    monkeypatch.chdir(tmp_path)  # the summary reads each artifact's size
    for name in ("m_fp32.tflite", "m_int8.tflite"):
        Path(name).write_bytes(b"tflite")
    reference = np.eye(50, 10, dtype=np.float32) + np.arange(10, dtype=np.float32) * 0.01
    flipped = reference.copy()
    flipped[:2] = flipped[:2, ::-1]
    records = [
        SimpleNamespace(artifact=Artifact(Path("m_fp32.tflite"), "tflite", "fp32"),
                        parity=compare(reference, reference, DEFAULT_THRESHOLDS["fp32"])),
        SimpleNamespace(artifact=Artifact(Path("m_int8.tflite"), "tflite", "int8"),
                        parity=compare(reference, flipped, DEFAULT_THRESHOLDS["int8"])),
    ]
    report = SimpleNamespace(model_dir=Path("out/m"), manifest_path=Path("out/m/manifest.json"), records=records,
                             removed=(), earlier_failures=())  # a fresh folder: nothing kept or removed
    assert summary_lines(report)[-1] == ("top-1 agreement 0.960 of m_int8.tflite on 50 samples: 95 % interval "
                                         "0.865-0.989; more --val photos narrow it")
    assert "interval" not in summary_lines(SimpleNamespace(**{**vars(report), "records": records[:1]}))[-1]
