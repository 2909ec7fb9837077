"""The hand-written inner gradients equal autograd's, for every architecture and bias.

The comparison is the kit's (``miraslab.testing.check_inner_factors``): away from W_init, at key
scales 0.3, 1 and 3, at a decayed gradient point and with per-channel weights on dl/dy.
Tolerance: float64, 1e-10 of the autograd value's scale.
"""

from __future__ import annotations

import itertools

import pytest
from memory_cases import BIASES, MEMORIES, make_rule

from miraslab.testing import check_bias_gradient, check_inner_factors


@pytest.mark.parametrize(("memory", "bias"), list(itertools.product(MEMORIES, BIASES)))
def test_analytic_factors_equal_autograd(memory, bias):
    check_inner_factors(make_rule(memory, bias, "decay", "momentum"), what=f"{memory}-{bias}")


@pytest.mark.parametrize("bias", BIASES)
def test_bias_gradient_equals_autograd_of_its_loss_at_several_scales(bias):
    check_bias_gradient(make_rule("linear", bias, "decay", "momentum").bias, what=bias)
