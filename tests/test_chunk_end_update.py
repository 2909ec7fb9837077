"""chunk_end_update against the same expression through autograd (float64: values 1e-12,
gradients 1e-10), with and without momentum, for both orientations of the outer sum, and
with an output unused (its gradient not materialised)."""

from __future__ import annotations

import pytest
import torch

from miraslab.memory.kernels.chunk_end_update import chunk_end_update


def reference(delta, h, row_w, row_s, beta, sigma, eta, w, s):
    def outer(row):
        return (delta * row.unsqueeze(-1)).transpose(-1, -2) @ h

    new_w = beta * w + outer(row_w)
    if s is None:
        return new_w, None
    return new_w + sigma * s, eta * s + outer(row_s)


@pytest.mark.parametrize("momentum", [True, False])
@pytest.mark.parametrize("widths", [(3, 5), (5, 3)], ids=["narrow-delta", "narrow-h"])
def test_matches_autograd_and_gradchecks(momentum, widths):
    d_out, d_in = widths
    g = torch.Generator().manual_seed(0)

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    b, heads, length = 2, 2, 4
    inputs = [
        make(b, heads, length, d_out),  # delta
        make(b, heads, length, d_in),  # h
        make(b, heads, length),  # row of K
        make(b, heads, length) if momentum else None,  # row of the momentum coefficients
        make(b, heads, 1, 1),  # beta_L
        make(b, heads, 1, 1) if momentum else None,  # sigma_L
        make(b, heads, 1, 1) if momentum else None,  # eta_L
        make(b, heads, d_out, d_in),  # W
        make(b, heads, d_out, d_in) if momentum else None,  # S
    ]
    ours, want = chunk_end_update(*inputs), reference(*inputs)
    outputs = [(o, e) for o, e in zip(ours, want, strict=True) if e is not None]
    for o, e in outputs:
        torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)
    used = [t for t in inputs if t is not None]
    cotangents = [torch.randn(e.shape, generator=g, dtype=torch.float64) for _, e in outputs]

    def grads(values):
        return torch.autograd.grad(sum((v * c).sum() for v, c in zip(values, cotangents, strict=True)), used)

    for a, e in zip(grads([o for o, _ in outputs]), grads([e for _, e in outputs]), strict=True):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda *a: chunk_end_update(*a)[: 2 if momentum else 1], tuple(inputs))


@pytest.mark.parametrize("used", ["w", "s"])
def test_one_output_unused_matches_autograd(used):
    g = torch.Generator().manual_seed(1)

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    b, heads, length, d_out, d_in = 2, 2, 3, 4, 5
    inputs = [
        make(b, heads, length, d_out),
        make(b, heads, length, d_in),
        make(b, heads, length),
        make(b, heads, length),
        make(b, heads, 1, 1),
        make(b, heads, 1, 1),
        make(b, heads, 1, 1),
        make(b, heads, d_out, d_in),
        make(b, heads, d_out, d_in),
    ]
    pick = 0 if used == "w" else 1
    cotangent = torch.randn(b, heads, d_out, d_in, generator=g, dtype=torch.float64)
    ours = torch.autograd.grad((chunk_end_update(*inputs)[pick] * cotangent).sum(), inputs, allow_unused=True)
    want = torch.autograd.grad((reference(*inputs)[pick] * cotangent).sum(), inputs, allow_unused=True)
    for x, a, e in zip(inputs, ours, want, strict=True):  # None: no gradient, as zeros
        zeros = torch.zeros_like(x)
        torch.testing.assert_close(
            a if a is not None else zeros, e if e is not None else zeros, rtol=1e-10, atol=1e-12
        )
