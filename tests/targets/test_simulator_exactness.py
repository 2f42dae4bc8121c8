"""The simulator accumulates int8 products in float32 only where float32 cannot round them: integers below 2**24
are exact, so a sum is exact in any order while the largest possible partial sum stays below that."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from targets.tflite.simulator import FLOAT32_EXACT_INTEGERS, INT8, exact_integer_sum, integer_operands


class Int8Input:
    """The parts of a tensor's description the bound reads: an int8 tensor with zero point -128 (|x - zp| <= 255)."""
    type = INT8
    zero_point = np.array([-128])


def _weights_summing_to(total: float, outputs: int = 4, inputs: int = 64) -> torch.Tensor:
    """1x1 convolution weights (O x 1 x 1 x I) whose largest per-output sum of |w| is `total`."""
    weights = torch.ones(outputs, 1, 1, inputs, dtype=torch.float64)
    weights[0] *= total / inputs
    return weights


def test_float32_is_used_only_while_the_largest_partial_sum_stays_below_2_to_the_24():
    x = torch.zeros(1, 2, 2, 64, dtype=torch.float64)
    largest_sum_of_weights = (FLOAT32_EXACT_INTEGERS - 1) / 255
    below, _ = integer_operands(x, _weights_summing_to(largest_sum_of_weights), Int8Input(), depthwise=False)
    above, _ = integer_operands(x, _weights_summing_to(largest_sum_of_weights + 1), Int8Input(), depthwise=False)
    assert below.dtype == torch.float32 and above.dtype == torch.float64


def test_the_bound_of_a_depthwise_convolution_sums_each_channel_over_its_taps():
    x = torch.zeros(1, 4, 4, 2, dtype=torch.float64)
    taps = torch.full((1, 3, 3, 2), 127.0, dtype=torch.float64)  # 9 x 127 x 255: far below 2**24
    assert integer_operands(x, taps, Int8Input(), depthwise=True)[0].dtype == torch.float32
    taps[..., 1] = 1e4  # one channel's taps: 9 x 1e4 x 255 > 2**24
    assert integer_operands(x, taps, Int8Input(), depthwise=True)[0].dtype == torch.float64


@pytest.mark.parametrize("accumulator, bias", [(2 ** 24 - 1, 2), (-(2 ** 24) + 3, -6), (1000, 2 ** 24 + 1)])
def test_an_accumulator_plus_bias_past_2_to_the_24_is_summed_exactly(accumulator, bias):
    """A float32 sum would round these (2**24 + 1 is no float32); the sum must be the exact integer."""
    total = exact_integer_sum(torch.tensor([float(accumulator)], dtype=torch.float32),
                              torch.tensor([float(bias)], dtype=torch.float64))
    assert int(total.item()) == accumulator + bias
    assert float(np.float32(accumulator) + np.float32(bias)) != accumulator + bias  # float32 alone would not be


def test_small_sums_stay_in_float32_and_exact():
    total = exact_integer_sum(torch.tensor([123456.0, -98765.0]), torch.tensor([-1.0, 3.0], dtype=torch.float64))
    assert total.dtype == torch.float32 and total.tolist() == [123455.0, -98762.0]
