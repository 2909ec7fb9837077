"""The scale-relative check the float32 equivalence tests use (tests/tolerance.py)."""

from __future__ import annotations

import pytest
import torch
from tolerance import FP32_EPS, assert_close_to_scale, scaled_error


def fp32_rounded_sum() -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 row sum against the same sum in float64: rounding only, in elements of very
    different sizes (a gradient of mixed scale, like conv.bias beside the qkv weights)."""
    generator = torch.Generator().manual_seed(0)
    terms = torch.randn(64, 4096, generator=generator, dtype=torch.float64)
    terms[:8] *= 1e-4  # small rows beside large ones
    return terms.float().sum(-1), terms.sum(-1)


def test_rounding_passes_at_the_scale_where_an_element_wise_tolerance_is_a_coin_toss():
    got, expected = fp32_rounded_sum()
    assert scaled_error(got, expected) < 100 * FP32_EPS
    assert_close_to_scale(got, expected, 1e-5)
    # the same error element-wise at 1e-7: the small rows' rounding is a large share of them
    with pytest.raises(AssertionError):
        torch.testing.assert_close(got.double(), expected, rtol=1e-7, atol=1e-7)


def test_an_error_of_a_miscompilation_size_fails():
    """One element off by 0.1 % of the tensor's scale, as a wrong kernel would be (the head
    split's miscompilation was off by several times the scale)."""
    got, expected = fp32_rounded_sum()
    wrong = got.clone()
    wrong[3] += 1e-3 * expected.abs().max()
    with pytest.raises(AssertionError, match="of the scale"):
        assert_close_to_scale(wrong, expected, 1e-4, "grad")


def test_non_finite_values_zero_tensors_and_shape_mismatches():
    with pytest.raises(AssertionError, match="non-finite"):
        assert_close_to_scale(torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 1.0]), 1e-4)
    assert scaled_error(torch.zeros(3), torch.zeros(3)) == 0.0
    assert scaled_error(torch.ones(3), torch.zeros(3)) == float("inf")
    with pytest.raises(AssertionError, match="shapes"):
        scaled_error(torch.ones(3), torch.ones(4))
