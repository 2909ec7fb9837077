"""TTT-Linear (x + LN(W x + b)) against its inner loop written out with plain tensors: mini-batch
gradient descent on W and b with per-token rates, every gradient of a mini-batch at its start
(TTT's dual form), reads after each token's step.  Tolerance: float64, 1e-10 of the scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from miraslab.api import memory_op
from miraslab.testing import RuleCase, check_rule, random_inputs

ATOL = 1e-10


def ttt_linear(w, b, gain, shift, x, eps):
    return (
        x + F.layer_norm(x @ w.transpose(-1, -2) + b.transpose(-1, -2), x.shape[-1:], eps=eps) * gain + shift
    )


def oracle(arch, q, k, v, theta, chunk):
    """W_t = W_s - sum_{s<i<=t} theta_i grad_W l(W_s; k_i, v_i), the same for b; l = 1/2 ||M(k) - v||^2."""
    batch = q.shape[0]
    gain, shift, eps = arch.ln_weight.detach(), arch.ln_bias.detach(), arch.eps
    w, b = (arch.init[n].detach().expand(batch, -1, -1, -1) for n in ("w", "w_bias"))
    start, out = (w, b), []
    for t in range(q.shape[2]):
        point = [p.detach().requires_grad_() for p in start]
        pred = ttt_linear(*point, gain, shift, k[:, :, t : t + 1], eps)
        grad_w, grad_b = torch.autograd.grad(0.5 * (pred - v[:, :, t : t + 1]).pow(2).sum(), point)
        step = theta[:, :, t, None, None]
        w, b = w - step * grad_w, b - step * grad_b
        out.append(ttt_linear(w, b, gain, shift, q[:, :, t : t + 1], eps))
        if (t + 1) % chunk == 0:
            start = (w, b)
    return torch.cat(out, dim=2), w, b


@pytest.mark.parametrize("chunk", [1, 4])
def test_ttt_linear_is_the_papers_inner_loop_on_both_paths(chunk):
    rule = RuleCase("ttt_linear", "l2", "none", {"name": "gd", "normalized": False}).build()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():  # away from the initial gain 1, shift 0 and b 0, so each one shows
        for p in (rule.arch.ln_weight, rule.arch.ln_bias, rule.arch.init["w_bias"]):
            p.add_(0.5 * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    q, k, v, gates, _ = random_inputs(rule, seq=10)
    gates = {n: g.detach() for n, g in gates.items()}
    expected, w, b = oracle(rule.arch, q, k, v, gates["lr"], chunk)
    with torch.no_grad():
        for path in ("chunked", "recurrent"):
            y, state = memory_op(rule, q, k, v, gates, chunk_size=chunk, path=path)
            for got, want in ((y, expected), (state.weights["w"], w), (state.weights["w_bias"], b)):
                scale = max(1.0, want.abs().max().item())
                assert (got - want).abs().max().item() <= ATOL * scale, path


def test_ttt_linear_with_the_logcosh_bias_decay_and_momentum():
    """The kit's whole contract (paths at chunks 1, 3, 5 and a carried state, decoding,
    gradients to W_init, b's W_init, ln_weight and ln_bias, the hand-written LN backward)."""
    check_rule(RuleCase("ttt_linear", {"name": "logcosh", "sharpness": 2.0}, "decay", "momentum"))
