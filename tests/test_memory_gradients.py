"""The hand-written inner gradients equal autograd's, for every architecture and bias.

Tolerance: float64, atol 1e-12.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from memory_cases import BIASES, MEMORIES, make_rule, random_inputs


def autograd_factors(rule, weights, keys, values, gates, weight_scale, out_weight):
    """The generic path: the architecture's forward and the bias's loss, differentiated by autograd."""
    analytic_arch, analytic_bias = rule.arch.analytic_factors, rule.bias.gradient
    rule.arch.analytic_factors = lambda *args: None
    rule.bias.gradient = lambda *args: None
    try:
        return rule.factors(weights, keys, values, gates, weight_scale, out_weight)
    finally:
        rule.arch.analytic_factors, rule.bias.gradient = analytic_arch, analytic_bias


@pytest.mark.parametrize(("memory", "bias"), list(itertools.product(MEMORIES, BIASES)))
@pytest.mark.parametrize("variant", ["plain", "decayed-point", "channel-weights"])
def test_analytic_factors_equal_autograd(memory, bias, variant):
    rule = make_rule(memory, bias, "decay", "momentum")
    _, k, v, gates, _ = random_inputs(rule, seq=7)
    state = rule.initial_state(2)
    weights = {n: w + 0.3 * torch.randn_like(w) for n, w in state.weights.items()}  # away from init
    scale = torch.rand(2, 2, 7, dtype=torch.double) if variant == "decayed-point" else None
    channels = torch.rand(2, 2, 7, 4, dtype=torch.double) if variant == "channel-weights" else None
    source_gates = {n: gates[n] for n in rule.bias_gate_names()}
    fast = rule.factors(weights, k, v, source_gates, scale, channels)
    slow = autograd_factors(rule, weights, k, v, source_gates, scale, channels)
    assert fast.keys() == slow.keys()
    for name in fast:
        torch.testing.assert_close(fast[name][0], slow[name][0], atol=1e-12, rtol=0)
        torch.testing.assert_close(fast[name][1], slow[name][1], atol=1e-12, rtol=0)
