from pathlib import Path

import numpy as np
import pytest

from core.contract import InputContract
from core.errors import InputError
from exporter.config import build_spec
from tests.helpers import NO_FLAGS


def test_preprocess_applies_scale_mean_std_and_color_order():
    pixel = np.array([[[255, 0, 51]]], dtype=np.uint8)  # one RGB pixel
    rgb = InputContract((1, 3, 1, 1), (0.5, 0.5, 0.5), (0.5, 0.25, 0.1), "rgb")
    bgr = InputContract((1, 3, 1, 1), (0.5, 0.5, 0.5), (0.5, 0.25, 0.1), "bgr")
    np.testing.assert_allclose(rgb.preprocess(pixel)[:, 0, 0], [1.0, -2.0, -3.0], atol=1e-6)
    np.testing.assert_allclose(bgr.preprocess(pixel)[:, 0, 0], [-0.6, -2.0, 5.0], atol=1e-6)


@pytest.mark.parametrize(
    "shape, mean, message",
    [((1, 3, 224), (0.5,) * 3, "N,C,H,W"), ((1, 3, 0, 224), (0.5,) * 3, "N,C,H,W"), ((1, 3, 8, 8), (0.5, 0.5), "--mean has 2 values")],
)
def test_bad_contracts_are_input_errors(shape, mean, message):
    with pytest.raises(InputError) as caught:
        InputContract(shape, mean, (0.5,) * 3)
    assert message in caught.value.message or message in caught.value.hint


def test_flags_override_config_and_config_paths_are_relative_to_it(tmp_path: Path):
    config = tmp_path / "export.toml"
    config.write_text(
        'model = "zoo:mobilenet_v2"\ncalib = "photos"\ninput_shape = [1, 3, 160, 160]\ncolor = "bgr"\n'
        "[parity.int8]\ntop1_agreement = 0.9\n"
    )
    spec = build_spec({**NO_FLAGS, "color": "rgb"}, config)
    assert spec.contract.input_shape == (1, 3, 160, 160)
    assert spec.contract.color == "rgb"  # the flag wins
    assert spec.calib == str(tmp_path / "photos")
    assert spec.thresholds["int8"].top1_agreement == 0.9 and spec.thresholds["int8"].cosine == 0.99


def test_pure_int8_comes_from_the_config_or_the_flag(tmp_path: Path):
    config = tmp_path / "export.toml"
    config.write_text('model = "zoo:mobilenet_v2"\npure_int8 = true\n')
    assert build_spec(dict(NO_FLAGS), config).pure_int8
    assert build_spec({**NO_FLAGS, "model": "zoo:mobilenet_v2", "pure_int8": True}).pure_int8
    assert not build_spec({**NO_FLAGS, "model": "zoo:mobilenet_v2"}).pure_int8


def test_unknown_config_keys_are_refused(tmp_path: Path):
    config = tmp_path / "export.toml"
    config.write_text('modle = "zoo:mobilenet_v2"\n')
    with pytest.raises(InputError, match="unknown keys"):
        build_spec(dict(NO_FLAGS), config)


def test_zoo_models_default_to_their_own_resolution():
    assert build_spec({"model": "zoo:mobilenet_v1_0_5_128"}).contract.input_shape == (1, 3, 128, 128)
    assert build_spec({"model": "zoo:mobilenet_v1_0_5_128", "input_shape": (1, 3, 96, 96)}).contract.input_shape == (
        1, 3, 96, 96)
    assert build_spec({"model": "model.onnx"}).contract.input_shape == (1, 3, 224, 224)
