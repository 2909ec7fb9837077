"""The hand-written backward of the batched matrix-memory pass against autograd.

The oracle is the same computation built from autograd ops (``hand_written_backward =
False``), which the path tests tie to the recurrent loop.  Float64; gradients of the
outputs and of the final state, with random cotangents, agree to 1e-10 relative.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from memory_cases import make_rule, random_inputs, tokens

from miraslab.memory.kernels.linear_chunks import linear_chunks
from miraslab.memory.paths import chunked_affine
from miraslab.memory.paths.tokens import Tokens

CASES = [
    (bias, retention, algorithm)
    for bias in ("l2", "dot")
    for retention in ("none", "decay")
    for algorithm in ("gd", "momentum")
]


def run(rule, q, k, v, gates, state, hand_written):
    return chunked_affine.whole_chunks(
        rule,
        Tokens(q, k, v, gates),
        dataclasses.replace(state),
        chunk_size=4,
        hand_written_backward=hand_written,
    )


@pytest.mark.parametrize("combo", CASES, ids="-".join)
@pytest.mark.parametrize("from_initial", [True, False], ids=["initial-state", "carried-state"])
def test_gradients_match_autograd(combo, from_initial):
    rule = make_rule("linear", *combo)
    assert chunked_affine.supports(rule)
    q, k, v, gates, gate_module = random_inputs(rule, seq=12, requires_grad=True, seed=3)
    state = rule.initial_state(q.shape[0])
    if not from_initial:  # a state with momentum and non-trivial weights, itself differentiable
        _, state = run(rule, *tokens(q, k, v, gates, slice(8)), state, False)
    generator = torch.Generator().manual_seed(1)
    inputs = [q, k, v, *gate_module.parameters(), *rule.parameters()]

    def gradients(hand_written):
        y, end = run(rule, q, k, v, gates, state, hand_written)
        loss = (y * torch.randn(y.shape, generator=generator.manual_seed(1), dtype=y.dtype)).sum()
        for w in end.weights.values():
            loss = loss + (w * torch.randn(w.shape, generator=generator.manual_seed(2), dtype=w.dtype)).sum()
        if end.momentum is not None:
            for s in end.momentum.values():
                loss = (
                    loss + (s * torch.randn(s.shape, generator=generator.manual_seed(3), dtype=s.dtype)).sum()
                )
        used = [t for t in inputs if t.requires_grad]
        return y, end, torch.autograd.grad(loss, used, allow_unused=True, retain_graph=True)

    y_hand, end_hand, grads_hand = gradients(True)
    y_ref, end_ref, grads_ref = gradients(False)
    torch.testing.assert_close(y_hand, y_ref, rtol=1e-10, atol=1e-12)
    for name in end_ref.weights:
        torch.testing.assert_close(end_hand.weights[name], end_ref.weights[name], rtol=1e-10, atol=1e-12)
    assert sum(g is not None for g in grads_ref) >= 4
    for got, want in zip(grads_hand, grads_ref, strict=True):
        if want is None:
            assert got is None or got.abs().max() == 0
            continue
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("momentum", [True, False])
@pytest.mark.parametrize("slope", [1.0, 0.0, 0.5])
def test_gradcheck_of_the_function(momentum, slope):
    """torch.autograd.gradcheck on every input of the Function, at a small size."""
    g = torch.Generator().manual_seed(0)

    def make(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.double)).requires_grad_()

    b, h, n, length, d, dv = 1, 2, 3, 4, 3, 2
    q, k, offset = make(b, h, n, length, d), make(b, h, n, length, d), make(b, h, n, length, dv)
    u = (0.1 + torch.rand(b, h, n, length, generator=g, dtype=torch.double)).requires_grad_()
    log_alpha = make(b, h, n, length, scale=0.1).detach().abs().neg().requires_grad_()
    log_eta = make(b, h, n, length, scale=0.1).detach().abs().neg().requires_grad_() if momentum else None
    w0, s0 = make(b, h, dv, d), make(b, h, dv, d) if momentum else None
    inputs = (q, k, offset, u, log_alpha, log_eta, w0, s0)

    def function(*args):
        y, w, s = linear_chunks(*args, slope)
        return (y, w) if s is None else (y, w, s)

    assert torch.autograd.gradcheck(function, inputs)


def test_bf16_autocast_keeps_the_state_in_fp32():
    rule = make_rule("linear", "l2", "decay", "momentum").float()
    q, k, v, gates, _ = random_inputs(rule.double(), seq=16)
    rule = rule.float()
    q, k, v = (t.float().to(torch.bfloat16) for t in (q, k, v))
    gates = {n: t.float() for n, t in gates.items()}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = chunked_affine.whole_chunks(
            rule, Tokens(q, k, v, gates), rule.initial_state(2), chunk_size=4
        )
    assert y.dtype == torch.bfloat16
    assert state.weights["w"].dtype == torch.float32 and state.momentum["w"].dtype == torch.float32
    assert torch.isfinite(y.float()).all()
