"""Properties over input shapes and preprocessing parameters (hypothesis): whatever the user passes, the tool
either builds tensors of exactly the contract's shape, or answers with an InputError, never anything else."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from core.contract import InputContract
from core.errors import InputError
from core.pixels import center_crop, random_crop, ten_crop
from exporter.config import parse_number_list
from exporter.datasets import DatasetPlan, build_datasets
from targets.coreml.preprocessing import image_preprocessing

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sizes = st.integers(min_value=1, max_value=96)
means = st.floats(min_value=-2.0, max_value=2.0, allow_nan=False)
stds = st.floats(min_value=0.01, max_value=2.0, allow_nan=False)


@st.composite
def contracts(draw, channels=st.sampled_from([1, 3])):
    count = draw(channels)
    return InputContract(
        input_shape=(draw(st.integers(1, 4)), count, draw(sizes), draw(sizes)),
        mean=tuple(draw(means) for _ in range(count)),
        std=tuple(draw(stds) for _ in range(count)),
        color=draw(st.sampled_from(["rgb", "bgr"])),
        pixel_scale=draw(st.sampled_from([1.0, 255.0, 65535.0])),
    )


photos = st.tuples(sizes, sizes).flatmap(lambda hw: arrays(np.uint8, (hw[0], hw[1], 3)))


@SETTINGS
@given(contract=contracts(), photo=photos)
def test_every_photo_becomes_a_tensor_of_the_contract_shape(contract, photo):
    tensor = contract.preprocess(center_crop(photo, contract.height, contract.width))
    assert tensor.shape == (contract.channels, contract.height, contract.width)
    assert tensor.dtype == np.float32 and np.isfinite(tensor).all()


@SETTINGS
@given(contract=contracts(channels=st.just(3)), photo=photos)
def test_preprocessing_can_be_undone_exactly_as_core_ml_does(contract, photo):
    """The Core ML runner feeds pixels recovered from the tensors: the contract must be invertible."""
    pixels = center_crop(photo, contract.height, contract.width)
    tensor = contract.preprocess(pixels)
    recovered = image_preprocessing(contract).pixels_from_tensor(tensor[None])[0]
    expected = pixels.transpose(2, 0, 1).astype(np.float64)
    if contract.color == "bgr":
        expected = expected[::-1]
    # float32 tensors carry ~7 digits: the rounding error, scaled back to pixels by std * pixel_scale.
    tolerance = 1e-3 + 4 * np.finfo(np.float32).eps * contract.pixel_scale * max(contract.std) * (np.abs(tensor).max() + 1)
    np.testing.assert_allclose(recovered, expected, atol=tolerance)


@SETTINGS
@given(photo=photos, height=sizes, width=sizes, seed=st.integers(0, 2**16))
def test_every_crop_has_the_requested_size(photo, height, width, seed):
    assert center_crop(photo, height, width).shape == (height, width, 3)
    assert random_crop(photo, height, width, np.random.default_rng(seed)).shape == (height, width, 3)
    crops = ten_crop(photo, height, width)
    assert len(crops) == 10 and all(crop.shape == (height, width, 3) for crop in crops)


numbers = st.one_of(st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True))


@SETTINGS
@given(shape=st.lists(st.integers(-2, 6), max_size=6), mean=st.lists(numbers, max_size=4),
       std=st.lists(numbers, max_size=4), color=st.sampled_from(["rgb", "bgr", "rgba", ""]),
       pixel_scale=numbers)
def test_any_contract_is_either_valid_or_an_input_error(shape, mean, std, color, pixel_scale):
    try:
        contract = InputContract(tuple(shape), tuple(mean), tuple(std), color, float(pixel_scale))
    except InputError as error:
        assert error.hint
        return
    assert len(contract.input_shape) == 4 and contract.channels in (1, 3)
    assert len(contract.mean) == len(contract.std) == contract.channels
    photo = np.random.default_rng(0).integers(0, 256, (contract.height, contract.width, 3), dtype=np.uint8)
    assert np.isfinite(contract.preprocess(photo)).all()


@SETTINGS
@given(text=st.text(max_size=30), cast=st.sampled_from([int, float]))
def test_any_number_list_flag_parses_or_is_an_input_error(text, cast):
    try:
        values = parse_number_list(text, "--mean", cast)
    except InputError:
        return
    assert all(isinstance(v, cast) for v in values)


@SETTINGS
@given(contract=contracts(channels=st.just(3)), count=st.integers(2, 6),
       layout=st.sampled_from(["photos", "tensors", "wrong"]), data=st.data())
def test_calibration_npy_of_any_shape_gives_contract_tensors_or_an_input_error(contract, count, layout, data,
                                                                               tmp_path_factory):
    if layout == "photos":
        array = data.draw(arrays(np.uint8, (count, data.draw(sizes), data.draw(sizes), 3)))
    elif layout == "tensors":
        array = np.zeros((count, 3, contract.height, contract.width), np.float32)
    else:
        array = np.zeros(data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=5)), np.float32)
    path = tmp_path_factory.mktemp("npy") / "calibration.npy"
    np.save(path, array)
    try:
        datasets = build_datasets(DatasetPlan(str(path), None), contract)
    except InputError:
        assert layout == "wrong"
        return
    expected = (contract.channels, contract.height, contract.width)
    assert datasets.calibration.shape[1:] == expected and datasets.validation.shape[1:] == expected
    assert len(datasets.calibration) + len(datasets.validation) == len(array)


@pytest.mark.parametrize("text", ["1,3,224,224", " 1, 3 ,224,224", "1,3,224,224,"])
def test_number_lists_tolerate_spaces_and_a_trailing_comma(text):
    assert parse_number_list(text, "--input-shape", int) == (1, 3, 224, 224)
