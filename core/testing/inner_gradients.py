"""An axis's hand-written pieces equal autograd of what they claim to differentiate.

Both execution paths use the same ``gradient()`` and ``analytic_factors()``, so a wrong one
still makes chunked == recurrent hold exactly; only a comparison with autograd of ``loss()``
and of ``forward()`` catches it, and only at options and input scales where the missing
factor is not 1.  Tolerance: ``GRADIENT_TOLERANCE`` of the autograd value's largest magnitude
(at least 1), float64.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .failure import KitFailure, expect_close
from .memory_inputs import random_inputs

GRADIENT_TOLERANCE = 1e-10
SCALES = (0.3, 1.0, 3.0)  # |M(k) - v| below, at and above 1: thresholds and powers take each branch


def gate_values(defs: list, shape: tuple[int, ...], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random values of the gates ``defs`` describe, as the engine hands them over (log for log_sigmoid)."""
    gates = {}
    for d in defs:
        z = 2 * torch.randn(*shape, generator=generator, dtype=torch.double)
        if d.activation == "log_sigmoid":
            gates[d.name] = F.logsigmoid(z)
        elif d.activation == "softplus":
            gates[d.name] = F.softplus(z)
        else:
            gates[d.name] = d.scale * torch.sigmoid(z)
    return gates


def check_bias_gradient(bias: Any, what: str = "bias", scales=SCALES, d: int = 4, seed: int = 0) -> None:
    """``loss()`` is per token; ``gradient()`` (when written) and ``gradient_slope`` /
    ``gradient_offset`` (when declared) equal autograd of ``loss().sum()`` at every scale."""
    generator = torch.Generator().manual_seed(seed)
    bias = bias.double()
    for scale in scales:
        shape = (2, 2, 5)
        pred = scale * torch.randn(*shape, d, generator=generator, dtype=torch.double)
        target = scale * torch.randn(*shape, d, generator=generator, dtype=torch.double)
        gates = gate_values(bias.gates(), shape, generator)
        where = f"{what} at input scale {scale}"
        leaf = pred.clone().requires_grad_()
        loss = bias.loss(leaf, target, gates)
        if loss.shape != shape:
            raise KitFailure(f"{where}: loss() must be per token, shape {shape}; got {tuple(loss.shape)}")
        (expected,) = torch.autograd.grad(loss.sum(), leaf)
        written = bias.gradient(pred, target, gates)
        if written is not None:
            expect_close(
                f"{where}: gradient() vs autograd of loss()",
                written.to(expected.dtype),
                expected,
                GRADIENT_TOLERANCE,
            )
        if bias.gradient_slope is not None:
            affine = bias.gradient_slope * pred + bias.gradient_offset(target, gates)
            expect_close(
                f"{where}: gradient_slope * pred + gradient_offset() vs autograd of loss()",
                affine, expected, GRADIENT_TOLERANCE,
            )  # fmt: skip


def check_inner_factors(rule: Any, what: str = "rule", scales=SCALES, seq: int = 7) -> None:
    """The per-token factors (h, delta) of the inner gradient, as the engine takes them (the
    architecture's ``analytic_factors`` and the bias's ``gradient``), equal those autograd finds
    from ``forward`` and ``loss`` alone: away from W_init, at several key scales, at a decayed
    gradient point and with per-channel weights on dl/dy."""
    batch, heads, d_out = 2, rule.arch.heads, rule.arch.d_out
    for scale in scales:
        _, k, v, gates, _ = random_inputs(rule, seq=seq, scale=scale)
        generator = torch.Generator().manual_seed(1)
        state = rule.initial_state(batch)
        weights = {
            n: w + 0.3 * torch.randn(w.shape, generator=generator, dtype=w.dtype)
            for n, w in state.weights.items()
        }
        source_gates = {n: gates[n] for n in rule.bias_gate_names()}
        variants = {
            "plain": (None, None),
            "decayed point": (torch.rand(batch, heads, seq, generator=generator, dtype=torch.double), None),
            "channel weights": (
                None,
                torch.rand(batch, heads, seq, d_out, generator=generator, dtype=torch.double),
            ),
        }
        for variant, (weight_scale, out_weight) in variants.items():
            fast = rule.factors(weights, k, v, source_gates, weight_scale, out_weight)
            slow = _autograd_factors(rule, weights, k, v, source_gates, weight_scale, out_weight)
            if fast.keys() != slow.keys():
                raise KitFailure(
                    f"{what}: analytic_factors names {sorted(fast)}, forward uses {sorted(slow)}"
                )
            for name in fast:
                for index, factor in enumerate(("h", "delta")):
                    expect_close(
                        f"{what} at key scale {scale}, {variant}: {factor} of {name!r}, hand-written vs autograd",
                        fast[name][index], slow[name][index], GRADIENT_TOLERANCE,
                    )  # fmt: skip


def _autograd_factors(rule, weights, keys, values, gates, weight_scale, out_weight):
    """The engine's generic path: the hand-written pieces hidden, autograd differentiates the rest."""
    arch, bias = rule.arch, rule.bias
    saved = arch.__dict__.get("analytic_factors"), bias.__dict__.get("gradient")
    arch.analytic_factors = lambda *args: None
    bias.gradient = lambda *args: None
    try:
        return rule.factors(weights, keys, values, gates, weight_scale, out_weight)
    finally:
        for module, name, value in ((arch, "analytic_factors", saved[0]), (bias, "gradient", saved[1])):
            del module.__dict__[name]
            if value is not None:
                module.__dict__[name] = value
