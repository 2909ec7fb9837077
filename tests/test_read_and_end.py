"""read_and_end (a map's dual-form read and its chunk end as one Function) against the two
expressions through autograd: float64, values 1e-12 and gradients 1e-10, with and without
momentum, with the chunk end's outputs used or not, and gradcheck."""

from __future__ import annotations

import pytest
import torch

from miraslab.memory.kernels.read_and_end import read_and_end


def reference(x, h, delta, coef, beta, sigma, w, s, row_w, row_s, beta_end, sigma_end, eta_end):
    y = (coef * (x @ h.transpose(-1, -2))) @ delta + (beta * x) @ w.transpose(-1, -2)

    def outer(row):
        return (delta * row.unsqueeze(-1)).transpose(-1, -2) @ h

    new_w = beta_end * w + outer(row_w)
    if s is None:
        return y, new_w, None
    y = y + (sigma * x) @ s.transpose(-1, -2)
    return y, new_w + sigma_end * s, eta_end * s + outer(row_s)


def inputs(momentum: bool, window: int = 0, seed: int = 0) -> list[torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)

    def make(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

    b, heads, length, d_in, d_out = 2, 2, 3, 4, 5
    sources = length + window  # an Omega window reads buffered sources too
    return [
        make(b, heads, length, d_in),  # x
        make(b, heads, sources, d_in),  # h
        make(b, heads, sources, d_out),  # delta
        make(b, heads, length, sources),  # coef
        make(b, heads, length, 1),  # beta
        make(b, heads, length, 1) if momentum else None,  # sigma
        make(b, heads, d_out, d_in),  # W
        make(b, heads, d_out, d_in) if momentum else None,  # S
        make(b, heads, sources),  # row of K
        make(b, heads, sources) if momentum else None,  # row of the momentum coefficients
        make(b, heads, 1, 1),  # beta_L
        make(b, heads, 1, 1) if momentum else None,  # sigma_L
        make(b, heads, 1, 1) if momentum else None,  # eta_L
    ]


@pytest.mark.parametrize("momentum", [True, False])
@pytest.mark.parametrize("used", ["all", "read", "read-and-w"])
@pytest.mark.parametrize("window", [0, 2])
def test_matches_autograd(momentum, used, window):
    args = inputs(momentum, window)
    ours, want = read_and_end(*args), reference(*args)
    for o, e in zip(ours, want, strict=True):
        if e is not None:
            torch.testing.assert_close(o, e, rtol=1e-12, atol=1e-12)
    keep = {"all": 3, "read": 1, "read-and-w": 2}[used]
    g = torch.Generator().manual_seed(1)
    cotangents = [
        torch.randn(e.shape, generator=g, dtype=torch.float64) for e in want[:keep] if e is not None
    ]
    used_inputs = [t for t in args if t is not None]

    def grads(values):
        loss = sum((v * c).sum() for v, c in zip(values, cotangents, strict=False))
        return torch.autograd.grad(loss, used_inputs, allow_unused=True)

    for x, a, e in zip(used_inputs, grads(ours[:keep]), grads(want[:keep]), strict=True):
        zeros = torch.zeros_like(x)  # None: no gradient, as zeros
        torch.testing.assert_close(
            a if a is not None else zeros, e if e is not None else zeros, rtol=1e-10, atol=1e-12
        )


@pytest.mark.parametrize("momentum", [True, False])
def test_gradchecks(momentum):
    args = tuple(inputs(momentum, seed=2))

    def outputs(*a):
        return tuple(t for t in read_and_end(*a) if t is not None)

    assert torch.autograd.gradcheck(outputs, args)
